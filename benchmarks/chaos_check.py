"""The chaos run's checker (benchmarks/chaos.py), apart from any server so that tests can feed it cases.

Its inputs: which messages the gateways accepted (customer, sequence number), the tenant's message rows and
escalations as the database holds them, and what the fake providers were asked to deliver (customer, text). A
message's text carries its tag `chaos<customer>x<seq>`; the fake LLM names the tags of the turn it answers in its
reply, so a delivered reply says which messages it answers.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

TAG = re.compile(r"\bchaos(\d+)x(\d+)(?:-(\d+))?\b")  # a reply may name a run of messages: chaos3x17-40
Key = tuple[int, int]  # (customer, sequence number)


def tag(customer: int, seq: int) -> str:
    return f"chaos{customer}x{seq}"


def name_all(keys: Iterable[Key]) -> str:
    """Tags for `keys`, consecutive numbers of a customer as one run (a merged turn of 60 messages still fits
    in a reply of the tenant's max_reply_chars)."""
    runs: list[list[int]] = []
    for customer, seq in sorted(set(keys)):
        if runs and runs[-1][0] == customer and runs[-1][2] == seq - 1:
            runs[-1][2] = seq
        else:
            runs.append([customer, seq, seq])
    return " ".join(tag(c, a) if a == b else f"{tag(c, a)}-{b}" for c, a, b in runs)


def named(text: str) -> list[Key]:
    """The messages a text names, runs expanded."""
    return [(int(m.group(1)), seq) for m in TAG.finditer(text)
            for seq in range(int(m.group(2)), int(m.group(3) or m.group(2)) + 1)]


@dataclass
class Report:
    sent: int = 0  # accepted by a gateway (2xx)
    refused: int = 0  # never accepted, though retried until the drain's half
    lost: int = 0  # no delivered reply names it, and neither it nor its turn was escalated
    duplicated_deliveries: int = 0  # one stored reply delivered more than once
    duplicated_answers: int = 0  # one message named by more than one delivered reply
    unexpected: int = 0  # a delivered text the database has no reply for, or naming a message not sent to them
    unanswered_unescalated: int = 0  # no row, or its turn ended neither answered nor escalated
    missing_rows: int = 0  # accepted, yet not in the database
    undelivered_replies: int = 0  # a reply stored as sent that the provider never received
    answered: int = 0
    escalated: int = 0
    merged: int = 0
    delivered: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    escalation_reasons: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def failures(self) -> int:
        return (self.lost + self.duplicated_deliveries + self.duplicated_answers + self.unexpected
                + self.unanswered_unescalated)

    def example(self, kind: str, what: str) -> None:
        found = self.examples.setdefault(kind, [])
        if len(found) < 5:
            found.append(what)


def count(accepted: Iterable[Key], rows: Sequence[Mapping[str, Any]], escalations: Mapping[str, str],
          deliveries: Sequence[tuple[int, str]], *, refused: int = 0) -> Report:
    """`rows`: every message of the tenant with `id`, `direction`, `status`, `text`, `meta` and `customer` (whose
    conversation); `escalations`: message id -> reason; `deliveries`: (customer, text) in the order the fake
    providers received them."""
    accepted = set(accepted)
    report = Report(sent=len(accepted), refused=refused, delivered=len(deliveries))
    by_id = {r["id"]: r for r in rows}
    inbound: dict[Key, Mapping[str, Any]] = {}
    for r in rows:
        if r["direction"] == "in" and (m := TAG.search(r["text"] or "")):
            inbound[int(m.group(1)), int(m.group(2))] = r
    report.statuses = dict(Counter(r["status"] for r in inbound.values()))
    report.escalation_reasons = dict(Counter(escalations.values()))

    # Replies as delivered against replies as stored: per customer, each stored text once.
    stored: dict[int, Counter[str]] = {}
    for r in rows:
        if r["direction"] == "out" and r["status"] in ("sent", "delivered", "read"):
            stored.setdefault(r["customer"], Counter())[r["text"]] += 1
    got: dict[int, Counter[str]] = {}
    for customer, text in deliveries:
        got.setdefault(customer, Counter())[text] += 1
    for customer in sorted(set(stored) | set(got)):
        want, have = stored.get(customer, Counter()), got.get(customer, Counter())
        for text in sorted(set(want) | set(have)):
            extra, missing = have[text] - want[text], want[text] - have[text]
            if extra > 0 and want[text] > 0:
                report.duplicated_deliveries += extra
                report.example("duplicated_deliveries", f"customer {customer}: {text[:90]!r} x{have[text]}")
            elif extra > 0:
                report.unexpected += extra
                report.example("unexpected", f"customer {customer}: {text[:90]!r}")
            if missing > 0:
                report.undelivered_replies += missing
                report.example("undelivered_replies", f"customer {customer}: {text[:90]!r}")

    # The messages each distinct delivered reply names: once each, and only to the customer who sent them.
    naming: Counter[Key] = Counter()
    for customer, text in sorted(set(deliveries)):
        for key in named(text):
            naming[key] += 1
            if key not in accepted or key[0] != customer:
                report.unexpected += 1
                report.example("unexpected", f"customer {customer} got a reply naming {tag(*key)}")
    for key, times in sorted(naming.items()):
        if times > 1:
            report.duplicated_answers += times - 1
            report.example("duplicated_answers", f"{tag(*key)} named by {times} different replies")

    for key in sorted(accepted):
        row = inbound.get(key)
        if row is None:
            report.missing_rows += 1
            report.unanswered_unescalated += 1
            report.example("missing_rows", tag(*key))
            if not naming[key]:
                report.lost += 1
                report.example("lost", f"{tag(*key)}: no row")
            continue
        end = turn_end(row, by_id)
        report.merged += row["status"] == "merged"
        escalated = end["id"] in escalations or end["status"] in ("escalated", "human")
        if end["status"] == "answered":
            report.answered += 1
        elif escalated:
            report.escalated += 1
        else:
            report.unanswered_unescalated += 1
            report.example("unanswered_unescalated", f"{tag(*key)}: {row['status']} -> {end['status']}")
        if not naming[key] and not escalated:
            report.lost += 1
            report.example("lost", f"{tag(*key)}: {row['status']} -> {end['status']}, no reply names it")
    return report


def turn_end(row: Mapping[str, Any], by_id: Mapping[str, Mapping[str, Any]]) -> Mapping[str, Any]:
    """The message whose answer or escalation ends `row`'s turn: `row` itself, or for a merged message the one
    it was merged into (`meta.superseded_by`), followed to the end."""
    seen: set[str] = set()
    while row["status"] == "merged" and row["id"] not in seen:
        seen.add(row["id"])
        following = by_id.get(str((row["meta"] or {}).get("superseded_by")))
        if following is None:
            break
        row = following
    return row
