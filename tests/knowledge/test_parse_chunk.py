"""Parsing and chunking rules, without the model: formats, refusals with reasons, and chunk shapes."""

from __future__ import annotations

import io
import itertools
import json
import zipfile
from pathlib import Path

import pytest

from app.knowledge.chunk import chunk_document, markdown_sections
from app.knowledge.collect import collect
from app.knowledge.ids import chunk_id
from app.knowledge.parse import ParsedDocument, ParseError, SourceFile, parse

MB = 1024 * 1024


def md(text: str) -> ParsedDocument:
    return parse(SourceFile("guide.md", text.encode()))


def test_markdown_sections_keep_heading_paths_and_ignore_code_fences() -> None:
    text = (
        "# Guide\nIntro.\n## Returns\nReturn it.\n```\n# not a heading\n```\n"
        "### Refunds\nMoney back.\n## Shipping\nFast."
    )
    assert markdown_sections(text) == [
        ("Guide", "Intro."),
        ("Guide > Returns", "Return it.\n```\n# not a heading\n```"),
        ("Guide > Returns > Refunds", "Money back."),
        ("Guide > Shipping", "Fast."),
    ]
    assert md(text).title == "Guide"


def test_paragraphs_pack_up_to_max_words_and_never_cross_sections() -> None:
    para = " ".join(["word"] * 30)
    doc = md("# A\n\n" + "\n\n".join([para] * 5) + "\n\n# B\n\nshort one")
    chunks = chunk_document(doc, max_words=70)
    assert [c.heading for c in chunks] == ["A", "A", "A", "B"]
    assert [c.words for c in chunks] == [60, 60, 30, 2]
    assert [c.ordinal for c in chunks] == [0, 1, 2, 3]


def test_long_paragraph_splits_at_sentences_with_overlap() -> None:
    sentences = [f"Sentence {i} says something about delivery windows." for i in range(40)]
    chunks = chunk_document(md("# Policy\n\n" + " ".join(sentences)), max_words=60, overlap=8)
    assert len(chunks) > 1
    assert all(c.words <= 60 for c in chunks)
    for prev, nxt in itertools.pairwise(chunks):
        assert nxt.text.split()[:8] == prev.text.split()[-8:]  # the overlap
    joined = " ".join(c.text for c in chunks)
    assert all(s in joined for s in sentences)  # nothing lost


def test_unbroken_text_falls_back_to_word_windows() -> None:
    chunks = chunk_document(parse(SourceFile("notes.txt", (" ".join(["x"] * 300)).encode())), max_words=100)
    assert [c.words for c in chunks] == [100, 100, 100, 36]  # default overlap: 100 // 8 = 12 words
    assert all(c.heading == "" for c in chunks)


def test_long_tables_repeat_their_header() -> None:
    rows = "\n".join(f"| Size {i} | {30 + i} in | {76 + i} cm |" for i in range(40))
    doc = md("# Sizes\n\n| Size | Chest | Chest cm |\n|---|---|---|\n" + rows)
    chunks = chunk_document(doc, max_words=60)
    assert len(chunks) > 1
    assert all(c.text.startswith("| Size | Chest | Chest cm |\n|---|---|---|\n| Size") for c in chunks)
    assert all(c.words <= 60 for c in chunks)


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("faq.csv", b'Question,Answer\nHow long?,Three days.\n\nCan I return?,"Yes, within 30 days."\n'),
        (
            "faq.json",
            json.dumps(
                [
                    {"question": "How long?", "answer": "Three days."},
                    {"question": "Can I return?", "answer": "Yes, within 30 days."},
                ]
            ).encode(),
        ),
        (
            "faq.json",
            json.dumps(
                {
                    "faqs": [
                        {"question": "How long?", "answer": "Three days."},
                        {"question": "Can I return?", "answer": "Yes, within 30 days."},
                    ]
                }
            ).encode(),
        ),
        (
            "faq.jsonl",
            b'{"question": "How long?", "answer": "Three days."}\n\n'
            b'{"question": "Can I return?", "answer": "Yes, within 30 days.", "tags": ["x"]}\n',
        ),
    ],
)
def test_faq_formats_give_one_chunk_per_pair(name: str, data: bytes) -> None:
    doc = parse(SourceFile(name, data))
    chunks = chunk_document(doc)
    assert doc.kind == "faq"
    assert [c.text for c in chunks] == [
        "Q: How long?\nA: Three days.",
        "Q: Can I return?\nA: Yes, within 30 days.",
    ]
    assert [c.heading for c in chunks] == ["How long?", "Can I return?"]


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("manual.pdf", b"%PDF-1.4", "corrupt PDF"),
        ("logo.png", b"\x89PNG", "unsupported file type .png"),
        ("README", b"hello", "unsupported file type (no extension)"),
        ("empty.md", b"  \n\n", "file is empty"),
        ("garbled.txt", b"caf\x81 \x8d", "not UTF-8, UTF-16 or Windows-1252"),
        ("ctrl.txt", b"caf\xe9 \x01\x02", "nor readable as Windows-1252"),
        ("bin.txt", b"abc\x00def", "binary"),
        ("faq.csv", b"q,a\nx,y\n", "needs 'question' and 'answer' columns"),
        ("faq.csv", b'question,answer\n"unterminated,x\n', "malformed CSV"),
        ("faq.csv", b"question,answer\nx,y,z\n", "malformed CSV at line 2"),
        ("faq.csv", b"question,answer\nx,\n", "row 2: needs non-empty"),
        ("faq.json", b'[{"question": "x", "answer": "y"},]', "invalid JSON at line 1"),
        ("faq.json", b'{"items": []}', "must be a list"),
        ("faq.json", b"[]", "no question/answer pairs"),
        ("faq.json", b'[{"question": "x"}]', "item 1: needs non-empty"),
        ("faq.jsonl", b'{"question": "x", "answer": "y"}\n{oops}\n', "invalid JSON on line 2"),
    ],
)
def test_bad_files_are_refused_with_a_clear_reason(name: str, data: bytes, reason: str) -> None:
    with pytest.raises(ParseError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        parse(SourceFile(name, data))


def test_collect_walks_folders_and_skips_hidden_files(tmp_path: Path) -> None:
    (tmp_path / "pack" / "policies").mkdir(parents=True)
    (tmp_path / "pack" / "a.md").write_text("# A")
    (tmp_path / "pack" / "policies" / "b.txt").write_text("b")
    (tmp_path / "pack" / ".DS_Store").write_bytes(b"\x00")
    (tmp_path / "big.md").write_bytes(b"x" * 2048)
    files, errors = collect([tmp_path / "pack", tmp_path / "big.md", tmp_path / "missing.md"], max_bytes=1024)
    assert [f.path for f in files] == ["a.md", "policies/b.txt"]
    assert [(e.file, e.reason.split(" ")[0]) for e in errors] == [
        ("big.md", "file"),
        (str(tmp_path / "missing.md"), "no"),
    ]
    assert "over the 1024-byte limit" in errors[0].reason


def _zip(tmp_path: Path, entries: dict[str, bytes]) -> Path:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    path = tmp_path / "pack.zip"
    path.write_bytes(buf.getvalue())
    return path


def test_zip_refuses_traversal_and_strips_a_single_top_folder(tmp_path: Path) -> None:
    archive = _zip(
        tmp_path,
        {
            "pack/shipping.md": b"# Shipping",
            "pack/faq/faq.csv": b"question,answer\nq,a\n",
            "pack/../../evil.md": b"# evil",
            "/etc/passwd.txt": b"root",
            "pack/__MACOSX/._shipping.md": b"junk",
        },
    )
    files, errors = collect([archive], max_bytes=MB)
    assert sorted(f.path for f in files) == ["faq/faq.csv", "shipping.md"]
    assert {e.file for e in errors} == {"pack/../../evil.md", "/etc/passwd.txt"}
    assert all("unsafe path in zip" in e.reason for e in errors)
    assert not (tmp_path.parent / "evil.md").exists()


def test_zip_limits_and_broken_zips(tmp_path: Path) -> None:
    archive = _zip(tmp_path, {"big.txt": b"x" * 5000, "ok.txt": b"fine"})
    files, errors = collect([archive], max_bytes=1000)
    assert [f.path for f in files] == ["ok.txt"] and "over the 1000-byte limit" in errors[0].reason
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK\x03\x04 not really")
    assert "not a readable zip" in collect([broken], max_bytes=MB)[1][0].reason


def test_duplicate_paths_in_one_upload_are_refused(tmp_path: Path) -> None:
    for d in ("one", "two"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "faq.md").write_text(f"# {d}")
    files, errors = collect([tmp_path / "one", tmp_path / "two"], max_bytes=MB)
    assert [f.data for f in files] == [b"# one"]
    assert errors[0].file == "faq.md" and "same path" in errors[0].reason


def test_chunk_ids_are_deterministic_uuids_scoped_by_every_part() -> None:
    base = chunk_id("t1", 1, "faq.csv", 0)
    assert base == chunk_id("t1", 1, "faq.csv", 0)
    assert (
        len(
            {
                base,
                chunk_id("t2", 1, "faq.csv", 0),
                chunk_id("t1", 2, "faq.csv", 0),
                chunk_id("t1", 1, "faq.md", 0),
                chunk_id("t1", 1, "faq.csv", 1),
            }
        )
        == 5
    )
    with pytest.raises(ValueError):
        chunk_id("", 1, "faq.csv", 0)
