"""A fresh phone-number set for choosing PHONE rules, kept apart from presidio_synth (whose *report* split is the
evaluation set and must not be looked at while choosing).

Made with Faker (the generator presidio_synth was made with), fixed seed, many locales' phone formats, in
hand-written customer-message contexts: the label before the number, after it (`555-0100-Office`, `(mobile)`),
none, extensions; and hard negatives that are not phone numbers: order, invoice, tracking and account numbers,
dates, amounts, ISBNs and EANs, postcodes, times, versions, SSNs and card numbers (other kinds, never PHONE).

    .venv/bin/python benchmarks/phone_fresh.py            # writes benchmarks/data/phone_fresh.jsonl

Each line: {"id", "split": "fresh", "locale", "template", "text", "phones": [[start, end], ...]} (`phones` empty for
a negative). The file is committed, so the set does not change with Faker's version.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parent / "data" / "phone_fresh.jsonl"
SEED = 20261130
LOCALES = ("en_US", "en_GB", "en_CA", "en_AU", "en_IE", "en_IN", "de_DE", "de_AT", "de_CH", "fr_FR", "fr_CH",
           "it_IT", "es_ES", "es_MX", "pt_PT", "pt_BR", "nl_NL", "nl_BE", "sv_SE", "da_DK", "no_NO", "fi_FI",
           "pl_PL", "cs_CZ", "hu_HU", "ro_RO", "el_GR", "tr_TR", "ja_JP", "en_NZ")
LABELS_AFTER = ("Office", "Fax", "Home", "Mobile", "Cell", "Work", "Direct", "Main")
POSITIVE = (
    "Call me on {p} please",
    "my number is {p}",
    "You can reach me at {p} after 5pm",
    "Phone: {p}",
    "Tel. {p}",
    "text me on {p} when the parcel ships",
    "They're not answering at {p}",
    "{p} is my cell, the old one is disconnected",
    "I tried {p} twice and nobody picked up",
    "{name}\n{p}-{label}\n{email}",
    "{p}-{label}",
    "Contact: {name}, {p}-{label}",
    "{p} ({label_lower})",
    "{p} {label}",
    "{name} | {p} - {label}",
    "Office line {p} ext. {ext}",
    "{p} x{ext} is the front desk",
    "Mobile: {p}\nEmail: {email}",
    "please update my phone to {p}",
    "{name}\n{street}\n{p}",
)
NEGATIVE = (
    "Order {order} has not arrived yet",
    "Order #{order} was charged twice",
    "invoice no. {order}",
    "my tracking number is {order}",
    "account number {account}",
    "reference {ref}",
    "It was delivered on {date} at {time}",
    "I paid {amount} for it",
    "the total was {currency}{big}",
    "ISBN {isbn}",
    "barcode {ean} on the box",
    "ship it to {postcode}",
    "between {year1}-{year2} we ordered {count} items",
    "version {version} crashes on start",
    "SSN {ssn}",
    "card {card}",
    "room {room} on floor {floor}",
    "{street}",
    "customer id {order}",
    "my loyalty number is {account}",
    "tracking {ref}",
    "I have {points} points on my card",
)


def main() -> None:
    from faker import Faker

    Faker.seed(SEED)
    rng = random.Random(SEED)
    fakes = {loc: Faker(loc) for loc in LOCALES}
    us = fakes["en_US"]
    rows = []
    for i in range(600):
        loc = LOCALES[i % len(LOCALES)]
        fake = fakes[loc]
        template = POSITIVE[rng.randrange(len(POSITIVE))]
        phone = fake.phone_number()
        label = rng.choice(LABELS_AFTER)
        values = {"name": fake.name(), "email": fake.email(), "label": label, "label_lower": label.lower(),
                  "ext": str(rng.randint(2, 9999)), "street": fake.street_address().replace("\n", ", ")}
        head, tail = template.split("{p}")
        head, tail = head.format(**values), tail.format(**values)
        rows.append({"id": f"p{i:04d}", "split": "fresh", "locale": loc, "template": template,
                     "text": head + phone + tail, "phones": [[len(head), len(head) + len(phone)]]})
    for i in range(600):
        loc = LOCALES[i % len(LOCALES)]
        fake = fakes[loc]
        template = NEGATIVE[rng.randrange(len(NEGATIVE))]
        values = {
            "order": str(rng.randint(10**6, 10**12)), "account": fake.bban() if rng.random() < 0.5 else
            str(rng.randint(10**7, 10**10)), "ref": us.bothify(rng.choice(("###-###-####", "##########", "#######",
                                                                             "###.###.####", "## ### ### ###"))),
            "date": fake.date(pattern=rng.choice(("%Y-%m-%d", "%d/%m/%Y", "%d.%m.%Y", "%m/%d/%Y"))),
            "time": fake.time(pattern="%H:%M"), "amount": fake.pricetag(),
            "currency": rng.choice(("$", "€", "£", "")), "big": f"{rng.randint(10**6, 10**9):,}".replace(",", " "),
            "isbn": fake.isbn13(), "ean": fake.ean13(), "postcode": fake.postcode(), "year1": rng.randint(1990, 2010),
            "year2": rng.randint(2011, 2026), "count": rng.randint(2, 99), "points": f"{rng.randint(1000, 99999):,}",
            "version": ".".join(str(rng.randint(0, 20)) for _ in range(rng.randint(3, 4))), "ssn": us.ssn(),
            "card": us.credit_card_number(), "room": rng.randint(100, 9999), "floor": rng.randint(1, 40),
            "street": fake.street_address().replace("\n", ", "),
        }
        rows.append({"id": f"n{i:04d}", "split": "fresh", "locale": loc, "template": template,
                     "text": template.format(**values), "phones": []})
    OUT.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"wrote {len(rows)} rows to {OUT}")


if __name__ == "__main__":
    main()
