"""A small synthetic pack (a bike shop's FAQ) with answerable and unanswerable questions, for the calibration
tests (written for this project)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

ENTRIES = [
    ("How long does a bike service take?", "A standard service takes two working days; a full overhaul takes five."),
    ("Do you fit tubeless tyres?", "Yes, we convert wheels to tubeless for $40 per wheel, sealant included."),
    ("Can I rent an e-bike?", "E-bikes rent for $45 a day or $120 a weekend, helmet and lock included."),
    ("Do you offer bike fitting?", "A professional bike fit takes 90 minutes and costs $150."),
    ("What is your returns policy?", "Unused parts can be returned within 30 days with the receipt."),
    ("Do you sell second-hand bikes?", "We sell inspected used bikes with a 6-month warranty on the frame."),
    ("Can I pay in instalments?", "Bikes over $800 can be paid in 12 monthly instalments with no interest."),
    ("Where is the shop?", "The shop is at 12 Canal Street, next to the railway station."),
    ("When are you open?", "We are open Tuesday to Saturday, 9 am to 6 pm; closed Sunday and Monday."),
    ("Do you repair electric bikes?", "Yes, our mechanics are certified for Bosch and Shimano e-bike motors."),
    ("Do you deliver bikes?", "We deliver assembled bikes within 20 km for $25, free over $1,000."),
    ("Do you have a loyalty programme?", "Members earn one point per dollar; 200 points give $10 off."),
]
ANSWERABLE = [
    ("how many days will my bike be in the workshop for a service", 0), ("how quick is a full overhaul", 0),
    ("can you set up my wheels tubeless", 1), ("price to convert to tubeless", 1),
    ("how much to hire an electric bike for the weekend", 2), ("is a helmet included with a rental e-bike", 2),
    ("can you fit me to my bike properly", 3), ("how much is a bike fit", 3),
    ("can i send back a part i didn't use", 4), ("how many days do i have to return a part", 4),
    ("do you have used bikes for sale", 5), ("is there a warranty on second hand bikes", 5),
    ("can i spread the cost of a bike over months", 6), ("do you do interest free finance", 6),
    ("what's your address", 7), ("is the store near the train station", 7),
    ("what are your opening hours", 8), ("are you open on sunday", 8),
    ("can you fix my bosch e-bike motor", 9), ("do you service ebikes", 9),
    ("can you bring the bike to my house", 10), ("how much is delivery of a new bike", 10),
    ("how do loyalty points work", 11), ("how many points for a discount", 11),
]
UNANSWERABLE = [
    "what's the weather tomorrow in paris", "how do i bake sourdough bread", "who won the football last night",
    "can you recommend a good dentist", "what is the capital of australia", "how do i reset my router password",
    "how much is a flight to new york", "what time does the cinema open", "can i book a hotel room",
    "how do i file my tax return", "what's a good recipe for lasagne", "is the swimming pool heated",
    "how do i renew my passport", "can you translate this into german", "what's my horoscope today",
    "how many calories in a banana",
]


def write(root: Path, *, unanswerable: bool = True, eval_set: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["question", "answer"])
    writer.writerows(ENTRIES)
    (root / "faq.csv").write_text(out.getvalue())
    if eval_set:
        (root / "_eval.jsonl").write_text("\n".join(
            json.dumps({"question": q, "expected_document": "faq.csv", "expected_heading": ENTRIES[i][0]})
            for q, i in ANSWERABLE))
    if unanswerable:
        (root / "_unanswerable.jsonl").write_text("\n".join(json.dumps({"question": q}) for q in UNANSWERABLE))
    return root
