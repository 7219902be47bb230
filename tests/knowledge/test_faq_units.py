"""Question/answer units from every format (app/knowledge/units.py): each extraction on its own, then the same
FAQ (a slice of COVID-QA) in every shape a brand uploads, which must give the same units. Parse and chunk only,
no model."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from app.knowledge.chunk import TextChunk, chunk_document
from app.knowledge.evaluate import EvalError, Question, parse_questions
from app.knowledge.parse import SourceFile, parse
from app.knowledge.representation import question_text
from app.knowledge.retrieval import Passage
from app.knowledge.units import question_of
from benchmarks.faq_shapes import DEFAULT_DATA, SHAPES, build_pack, html_answer, load

SUBSET = 40  # COVID-QA entries in the shape comparison (two of them published twice)


def units(name: str, data: bytes | str) -> list[tuple[str, str]]:
    doc = parse(SourceFile(name, data.encode() if isinstance(data, str) else data))
    return [(c.heading, c.text) for c in chunk_document(doc) if question_text(c)]


def chunks(name: str, data: bytes | str) -> list[TextChunk]:
    return chunk_document(parse(SourceFile(name, data.encode() if isinstance(data, str) else data)))


@pytest.mark.parametrize(
    ("title", "question"),
    [
        ("How do I return an item?", "How do I return an item?"),
        ("Can I pay later", "Can I pay later"),
        ("How long does delivery take", "How long does delivery take"),
        ("Q3. Where is my order", "Where is my order"),
        ("Question: Do you ship abroad?", "Do you ship abroad?"),
        ("2) Is there a warranty?", "Is there a warranty?"),
        ("How to measure", None),  # instructions, not a question
        ("What the warranty covers", None),
        ("Shipping", None),
        ("Is it", None),  # too short to tell without a "?"
        ("", None),
    ],
)
def test_question_shaped_titles(title: str, question: str | None) -> None:
    assert question_of(title) == question


def test_markdown_question_headings_become_units_and_topics_stay_sections() -> None:
    text = ("# Help\n\nWelcome to our help.\n\n## How do I return an item?\n\nSend it back within 30 days.\n\n"
            "### Exceptions\n\nSale items are final.\n\n## Shipping\n\nWe ship in 3 days.\n\n"
            "## Q2. Can I pay later\n\nYes, with Klarna.\n")
    got = [(c.heading, c.text) for c in chunks("help.md", text)]
    assert got == [
        ("Help", "Welcome to our help."),
        ("How do I return an item?",
         "Q: How do I return an item?\nA: Send it back within 30 days.\n\nExceptions\n\nSale items are final."),
        ("Help > Shipping", "We ship in 3 days."),
        ("Can I pay later", "Q: Can I pay later\nA: Yes, with Klarna."),
    ]
    # The same units as the CSV path gives the same pairs.
    csv = ('question,answer\n"How do I return an item?","Send it back within 30 days.\n\nExceptions\n\n'
           'Sale items are final."\nCan I pay later,"Yes, with Klarna."\n')
    assert units("faq.csv", csv) == [g for g in got if g[1].startswith("Q: ")]


def test_one_file_per_question_takes_its_title_as_the_question() -> None:
    answer = "Click 'Forgot password' on the sign-in page."
    want = [("How do I reset my password?", f"Q: How do I reset my password?\nA: {answer}")]
    assert units("reset.md", f"# How do I reset my password?\n\n{answer}\n") == want
    assert units("reset.md", f"---\ntitle: How do I reset my password?\n---\n{answer}\n") == want
    assert units("reset.html", f"<html><head><title>How do I reset my password?</title></head><body><p>{answer}"
                               "</p></body></html>") == want
    # Only the file's name to go by: a question still, without its "?".
    assert units("how-do-i-reset-my-password.txt", answer) == [
        ("how do i reset my password", f"Q: how do i reset my password\nA: {answer}")
    ]
    # A topic title is no question: the file is an ordinary document.
    assert units("shipping.md", "We ship in 3 days.") == []


def test_html_definition_list() -> None:
    page = ("<html><body><main><h1>Orders</h1><dl><dt>Can I change my order?</dt><dd>Within 30 minutes.</dd>"
            "<dt>Where is my parcel?</dt><dd><p>Use the tracking link.</p><p>It updates daily.</p></dd></dl>"
            "<p>Still stuck? Write to us.</p></main></body></html>")
    got = [(c.heading, c.text) for c in chunks("orders.html", page)]
    assert got == [
        ("Can I change my order?", "Q: Can I change my order?\nA: Within 30 minutes."),
        ("Where is my parcel?", "Q: Where is my parcel?\nA: Use the tracking link.\n\nIt updates daily."),
        ("Orders", "Still stuck? Write to us."),  # the text after the list is back under the page's heading
    ]


def test_html_details_summary_accordion() -> None:
    page = ("<html><body><h1>FAQ</h1><details><summary>Do you ship abroad?</summary><p>To the EU and the UK.</p>"
            "</details><details open><summary>How long does delivery take?</summary>Three to six days.</details>"
            "</body></html>")
    assert units("faq.html", page) == [
        ("Do you ship abroad?", "Q: Do you ship abroad?\nA: To the EU and the UK."),
        ("How long does delivery take?", "Q: How long does delivery take?\nA: Three to six days."),
    ]


def test_html_accordion_classes() -> None:
    page = ("<html><body><h1>Help</h1>"
            '<div class="accordion"><div class="accordion-item"><h2 class="accordion-header">'
            '<button class="accordion-button" aria-expanded="false">Can I pay with PayPal?</button></h2>'
            '<div class="accordion-collapse collapse"><div class="accordion-body">Yes, at checkout.</div></div>'
            "</div></div>"
            '<div class="faq-item"><div class="faq-question">Do gift cards expire?</div>'
            '<div class="faq-answer">Never.</div></div>'
            '<div class="faq__item"><span class="faq__question">Is there a warranty?</span>'
            '<div class="faq__answer"><p>Two years.</p></div></div></body></html>')
    assert units("help.html", page) == [
        ("Can I pay with PayPal?", "Q: Can I pay with PayPal?\nA: Yes, at checkout."),
        ("Do gift cards expire?", "Q: Do gift cards expire?\nA: Never."),
        ("Is there a warranty?", "Q: Is there a warranty?\nA: Two years."),
    ]


def test_html_faqpage_jsonld_and_a_question_the_page_also_shows_is_kept_once() -> None:
    ld = {"@context": "https://schema.org", "@graph": [
        {"@type": "WebPage", "name": "Help"},
        {"@type": "FAQPage", "mainEntity": [
            {"@type": "Question", "name": "Do you ship abroad?",
             "acceptedAnswer": {"@type": "Answer", "text": "<p>Yes, to the <b>EU</b>.</p>"}},
            {"@type": "Question", "name": "Can I pay later?",
             "acceptedAnswer": {"@type": "Answer", "text": "Shown on the page too."}},
        ]},
    ]}
    page = (f'<html><head><script type="application/ld+json">{json.dumps(ld)}</script>'
            '<script type="application/ld+json">{not json</script></head>'
            "<body><h1>Help</h1><h2>Can I pay later?</h2><p>Yes, with Klarna.</p></body></html>")
    assert units("help.html", page) == [
        ("Can I pay later?", "Q: Can I pay later?\nA: Yes, with Klarna."),
        ("Do you ship abroad?", "Q: Do you ship abroad?\nA: Yes, to the EU."),
    ]


def docx_bytes(title: str, pairs: list[tuple[str, str]], level: int = 2) -> bytes:
    from docx import Document

    document = Document()
    document.add_heading(title, level=1)
    document.add_paragraph("Answers to common questions.")
    for question, answer in pairs:
        document.add_heading(question, level=level)
        for paragraph in answer.split("\n\n"):
            document.add_paragraph(paragraph)
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def test_docx_heading_styles() -> None:
    data = docx_bytes("Northwind FAQ", [("Do you ship abroad?", "Yes.\n\nTo the EU."), ("Shipping costs", "Free.")])
    got = [(c.heading, c.text) for c in chunks("faq.docx", data)]
    assert got == [
        ("Northwind FAQ", "Answers to common questions."),
        ("Do you ship abroad?", "Q: Do you ship abroad?\nA: Yes.\n\nTo the EU."),
        ("Northwind FAQ > Shipping costs", "Free."),
    ]


def covid_subset() -> list[dict[str, object]]:
    rows, _ = load(DEFAULT_DATA)
    return rows[:SUBSET]


def shape_units(folder: Path) -> list[tuple[str, str]]:
    out = []
    for path in sorted(folder.iterdir()):
        out += units(path.name, path.read_bytes())
    return out


def spaced(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Units with the runs of spaces inside each line collapsed, as HTML collapses them (the embedder's and
    BM25's tokens are the same either way)."""
    return [(q, "\n".join(" ".join(line.split()) for line in text.split("\n"))) for q, text in pairs]


def test_every_shape_of_the_same_faq_gives_the_same_units(tmp_path: Path) -> None:
    rows = covid_subset()
    exact = [(r["question"], f"Q: {r['question']}\nA: {r['answer']}") for r in rows]
    expected = spaced(exact)
    for shape in SHAPES:
        build_pack(shape, rows, tmp_path / shape)
        got = shape_units(tmp_path / shape)
        assert spaced(got) == expected, shape
        if shape != "html":
            assert got == exact, shape  # byte for byte
    # The markups the benchmark does not build, from the same rows: DOCX headings, a definition list, an
    # accordion, FAQPage JSON-LD alone, one HTML page per entry.
    pairs = [(str(r["question"]), str(r["answer"])) for r in rows]
    assert spaced(units("faq.docx", docx_bytes("COVID-19 FAQ", pairs, level=3))) == expected

    import html

    esc = [(html.escape(q), a) for q, a in pairs]
    paras = html_answer
    dl = "<dl>" + "".join(f"<dt>{q}</dt><dd>{paras(a)}</dd>" for q, a in esc) + "</dl>"
    assert spaced(units("dl.html", f"<html><body><h1>FAQ</h1>{dl}</body></html>")) == expected
    details = "".join(f"<details><summary>{q}</summary>{paras(a)}</details>" for q, a in esc)
    assert spaced(units("details.html", f"<html><body><h1>FAQ</h1>{details}</body></html>")) == expected
    ld = {"@context": "https://schema.org", "@type": "FAQPage", "mainEntity": [
        {"@type": "Question", "name": q, "acceptedAnswer": {"@type": "Answer", "text": a}} for q, a in pairs]}
    jsonld = (f'<html><head><title>FAQ</title><script type="application/ld+json">{json.dumps(ld)}</script></head>'
              "<body><h1>FAQ</h1><p>Our answers.</p></body></html>")
    flat = [(q, f"Q: {q}\nA: {' '.join(a.split())}") for q, a in pairs]  # JSON-LD answers are one paragraph
    assert units("ld.html", jsonld) == flat
    per_page = []
    for i, (q, a) in enumerate(esc):
        per_page += units(f"{i:03d}.html", f"<html><head><title>{q}</title></head><body>{paras(a)}</body></html>")
    assert spaced(per_page) == expected


def test_question_view_is_read_from_the_chunk_not_the_file_type() -> None:
    unit = TextChunk(0, "Do you ship to Canada?", "Q: Do you ship to Canada?\nA: Yes.")
    assert question_text(unit) == question_text(unit, "markdown") == question_text(unit, "faq") == unit.heading
    assert question_text(TextChunk(1, "Shipping > Canada", "We ship to Canada.")) is None
    assert question_text(TextChunk(2, "Other question?", "Q: Do you ship to Canada?\nA: Yes.")) is None


def test_eval_lines_can_name_the_entry_and_several_files() -> None:
    lines = "\n".join(json.dumps(x) for x in [
        {"question": "stigma?", "expected_document": "faq.md", "expected_heading": "How can people stop stigma?"},
        {"question": "pregnant staff", "expected_document": ["faq-080.md", "faq-089.md"]},
    ])
    one, two = parse_questions(lines)
    assert one == Question("stigma?", "faq.md", "How can people stop stigma?")
    assert two.expected_document == ("faq-080.md", "faq-089.md") and two.expected_heading is None

    def passage(document: str, heading: str) -> Passage:
        return Passage("id", document, heading, "text", 0.5, 1)

    assert one.matches(passage("faq.md", "how can people  stop stigma?"))
    assert one.matches(passage("faq.md", "COVID FAQ > How can people stop stigma?"))  # a heading path's end
    assert not one.matches(passage("faq.md", "Something else?"))
    assert not one.matches(passage("other.md", "How can people stop stigma?"))
    assert two.matches(passage("faq-089.md", "x")) and not two.matches(passage("faq-081.md", "x"))
    for bad in ({"question": "q", "expected_document": []}, {"question": "q", "expected_document": [1]},
                {"question": "q", "expected_document": "a.md", "expected_heading": ""}):
        with pytest.raises(EvalError, match="line 1"):
            parse_questions(json.dumps(bad))


def test_the_example_brands_faq_as_markdown_gives_the_csv_units() -> None:
    """tenants/northwind's FAQ exported as a help centre would (a Markdown file per entry, or one file of `##`
    questions) is indexed as the CSV is: same passages, same question views."""
    import csv

    path = Path(__file__).resolve().parents[2] / "tenants" / "northwind" / "knowledge" / "faq.csv"
    from_csv = units("faq.csv", path.read_bytes())
    pairs = [(row["question"].strip(), row["answer"].strip()) for row in csv.DictReader(io.StringIO(path.read_text()))]
    assert len(from_csv) == len(pairs) > 50
    per_entry = []
    for i, (q, a) in enumerate(pairs):
        per_entry += units(f"faq/{i:02d}.md", f"# {q}\n\n{a}\n")
    one_file = units("faq.md", "# Northwind FAQ\n\n" + "".join(f"## {q}\n\n{a}\n\n" for q, a in pairs))
    assert per_entry == one_file == from_csv


def test_a_question_over_a_long_article_is_cut_and_every_piece_keeps_its_question() -> None:
    article = "\n\n".join(" ".join(f"step{p}word{i}" for i in range(100)) + "." for p in range(12))  # 1,200 words
    got = chunk_document(parse(SourceFile("guide.md", f"# How do I set up the tent?\n\n{article}".encode())),
                         max_words=120)
    assert len(got) > 1
    assert all(c.heading == "How do I set up the tent?" and question_text(c) == c.heading for c in got)
    assert all(c.text.startswith("Q: How do I set up the tent?\nA: ") and c.words <= 120 + 9 for c in got)
    # A short answer stays whole, as a CSV row's does, up to UNIT_MAX_FACTOR x max_words.
    short = " ".join(["word"] * 300)
    assert len(chunk_document(parse(SourceFile("g.md", f"# Can I wash it?\n\n{short}".encode())), max_words=120)) == 1
