"""The chaos run's checker (benchmarks/chaos_check.py) counts what it should, on hand-made runs: a clean run counts
no failure, and each kind of failure is counted as its kind and nothing else."""

from __future__ import annotations

from typing import Any

from benchmarks.chaos_check import Report, count, name_all, named

NOTICE = "A person from our team will get back to you here."


def inbound(mid: str, customer: int, seq: int, status: str, superseded_by: str | None = None) -> dict[str, Any]:
    meta = {"superseded_by": superseded_by} if superseded_by else {}
    return {"id": mid, "direction": "in", "status": status, "text": f"do gift cards expire? (chaos{customer}x{seq})",
            "meta": meta, "customer": customer}


def reply(mid: str, customer: int, text: str, status: str = "sent") -> dict[str, Any]:
    return {"id": mid, "direction": "out", "status": status, "text": text, "meta": {}, "customer": customer}


ANSWER_1 = "Gift cards never expire [1] Anything else about chaos0x1?"
ANSWER_23 = "Gift cards never expire [1] Anything else about chaos0x2 chaos0x3?"

# Customer 0 sent 1 (answered), 2 (merged into 3) and 3 (answered, naming both); customer 1 sent 1 (escalated:
# the notice went out, no reply names it).
CLEAN_ROWS = [
    inbound("a", 0, 1, "answered"), reply("ra", 0, ANSWER_1),
    inbound("b", 0, 2, "merged", superseded_by="c"), inbound("c", 0, 3, "answered"), reply("rc", 0, ANSWER_23),
    inbound("d", 1, 1, "escalated"), reply("rd", 1, NOTICE),
]
CLEAN_ACCEPTED = {(0, 1), (0, 2), (0, 3), (1, 1)}
CLEAN_DELIVERIES = [(0, ANSWER_1), (0, ANSWER_23), (1, NOTICE)]


def failures(report: Report) -> dict[str, int]:
    kinds = ("lost", "duplicated_deliveries", "duplicated_answers", "unexpected", "unanswered_unescalated",
             "missing_rows", "undelivered_replies")
    return {k: getattr(report, k) for k in kinds if getattr(report, k)}


def test_a_clean_run_counts_no_failure_and_follows_merged_messages_to_their_turn() -> None:
    report = count(CLEAN_ACCEPTED, CLEAN_ROWS, {"d": "llm_unavailable"}, CLEAN_DELIVERIES)
    assert failures(report) == {}
    assert report.failures == 0
    assert (report.sent, report.answered, report.escalated, report.merged, report.delivered) == (4, 3, 1, 1, 3)
    assert report.statuses == {"answered": 2, "merged": 1, "escalated": 1}


def test_a_reply_delivered_twice_is_a_duplicated_delivery() -> None:
    report = count(CLEAN_ACCEPTED, CLEAN_ROWS, {"d": "llm_unavailable"}, [*CLEAN_DELIVERIES, (0, ANSWER_1)])
    assert failures(report) == {"duplicated_deliveries": 1}


def test_a_message_answered_by_two_replies_is_a_duplicated_answer() -> None:
    again = "Gift cards never expire, truly [1] Anything else about chaos0x1?"
    rows = [*CLEAN_ROWS, reply("ra2", 0, again)]
    report = count(CLEAN_ACCEPTED, rows, {"d": "llm_unavailable"}, [*CLEAN_DELIVERIES, (0, again)])
    assert failures(report) == {"duplicated_answers": 1}


def test_a_message_still_received_with_no_reply_is_lost_and_neither_answered_nor_escalated() -> None:
    rows = [*CLEAN_ROWS, inbound("e", 1, 2, "received")]
    report = count(CLEAN_ACCEPTED | {(1, 2)}, rows, {"d": "llm_unavailable"}, CLEAN_DELIVERIES)
    assert failures(report) == {"lost": 1, "unanswered_unescalated": 1}
    assert report.examples["lost"] == ["chaos1x2: received -> received, no reply names it"]


def test_an_accepted_message_missing_from_the_database_is_lost() -> None:
    report = count(CLEAN_ACCEPTED | {(1, 5)}, CLEAN_ROWS, {"d": "llm_unavailable"}, CLEAN_DELIVERIES)
    assert failures(report) == {"lost": 1, "unanswered_unescalated": 1, "missing_rows": 1}


def test_a_dead_lettered_message_counts_as_neither_answered_nor_escalated() -> None:
    rows = [*CLEAN_ROWS, inbound("e", 1, 2, "dead")]
    report = count(CLEAN_ACCEPTED | {(1, 2)}, rows, {"d": "llm_unavailable"}, CLEAN_DELIVERIES)
    assert report.unanswered_unescalated == 1 and report.lost == 1


def test_an_answered_message_whose_reply_never_arrived_is_lost() -> None:
    report = count(CLEAN_ACCEPTED, CLEAN_ROWS, {"d": "llm_unavailable"}, [(0, ANSWER_23), (1, NOTICE)])
    assert failures(report) == {"lost": 1, "undelivered_replies": 1}


def test_a_delivery_the_database_has_no_reply_for_is_unexpected() -> None:
    report = count(CLEAN_ACCEPTED, CLEAN_ROWS, {"d": "llm_unavailable"},
                   [*CLEAN_DELIVERIES, (1, "Something nobody stored.")])
    assert failures(report) == {"unexpected": 1}


def test_a_reply_naming_another_customers_message_is_unexpected() -> None:
    wrong = "Gift cards never expire [1] Anything else about chaos1x1?"
    rows = [*CLEAN_ROWS, reply("rx", 0, wrong)]
    report = count(CLEAN_ACCEPTED, rows, {"d": "llm_unavailable"}, [*CLEAN_DELIVERIES, (0, wrong)])
    assert failures(report) == {"unexpected": 1}


def test_a_reply_names_a_run_of_merged_messages_compactly_and_the_checker_expands_it() -> None:
    keys = [(0, 3), (0, 4), (0, 5), (0, 9), (1, 2)]
    assert name_all(keys) == "chaos0x3-5 chaos0x9 chaos1x2"
    assert named(f"Anything else about {name_all(keys)}?") == keys
    text = "Gift cards never expire [1] Anything else about chaos0x2-3?"
    rows = [row if row["id"] != "rc" else reply("rc", 0, text) for row in CLEAN_ROWS]
    deliveries = [(c, text if t == ANSWER_23 else t) for c, t in CLEAN_DELIVERIES]
    assert count(CLEAN_ACCEPTED, rows, {"d": "llm_unavailable"}, deliveries).failures == 0
    dropped = count(CLEAN_ACCEPTED | {(0, 4)}, [*rows, inbound("e", 0, 4, "merged", superseded_by="c")],
                    {"d": "llm_unavailable"}, deliveries)
    # 0x4 was merged into 0x3's answered turn, yet the reply does not name it: its text never reached the
    # answer, so it is lost although the database calls its turn answered.
    assert (dropped.lost, dropped.answered, dropped.examples["lost"]) == (
        1, 4, ["chaos0x4: merged -> answered, no reply names it"])
