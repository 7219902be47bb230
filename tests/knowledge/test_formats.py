"""Every supported format parsed from real bytes (built in code), and each kind of broken file refused with a
reason a tenant admin can act on. No embedder needed: parse and chunk only."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from app.knowledge.chunk import chunk_document
from app.knowledge.collect import collect
from app.knowledge.parse import ParseError, SourceFile, decode, parse
from tests.knowledge import samples


def test_html_keeps_headings_and_tables_and_drops_scripts_styles_navigation() -> None:
    doc = parse(SourceFile("care/boots.html", samples.HTML_PAGE.encode()))
    assert doc.kind == "html" and doc.title == "Boot care | Northwind"
    for gone in ("SECRET-TRACKER", "color: red", "Shop all", "Free shipping", "Copyright"):
        assert gone not in doc.text
    chunks = chunk_document(doc, max_words=40)
    headings = [c.heading for c in chunks]
    assert "Boot care" in headings and "Boot care > Waterproofing" in headings
    table = [c for c in chunks if "| Leather | Beeswax balm |" in c.text]
    assert len(table) == 1 and "| Suede | Nano spray |" in table[0].text  # the table stays in one chunk
    assert "| Material | Product |" in table[0].text


def test_pdf_text_per_page_and_title() -> None:
    data = samples.pdf(["Returns are free within 30 days.", "Refunds take five business days."], "Returns")
    doc = parse(SourceFile("returns.pdf", data))
    assert doc.kind == "pdf" and doc.title == "Returns"
    assert "Returns are free within 30 days." in doc.text and "Refunds take five business days." in doc.text
    assert chunk_document(doc)


def test_docx_headings_from_styles_and_tables_whole() -> None:
    data = samples.docx("Size guide", ["Our boots run half a size large."],
                        [["EU", "US"], ["42", "9"], ["43", "10"]])
    doc = parse(SourceFile("sizes.docx", data))
    assert doc.kind == "docx" and doc.title == "Size guide"
    chunks = chunk_document(doc)
    assert [c.heading for c in chunks] == ["Size guide", "Size guide > Sizes"]
    assert chunks[1].text == "| EU | US |\n|---|---|\n| 42 | 9 |\n| 43 | 10 |"


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("locked.pdf", samples.encrypted_pdf("secret prices"), "encrypted PDF: remove the password and upload again"),
        ("cut.pdf", samples.pdf(["hello"])[:60], "corrupt PDF"),
        ("noise.pdf", b"%PDF-1.7\n" + bytes(range(256)) * 4, "corrupt PDF"),
        ("scan.pdf", samples.pdf([""]), "no text layer"),
        ("broken.docx", b"PK\x03\x04 not really a zip", "corrupt DOCX"),
        ("notword.docx", b"", "file is empty"),
        ("empty.html", b"<html><script>x()</script><nav>menu</nav></html>", "no readable text"),
        ("utf16-broken.md", b"\xff\xfeA\x00\x00\xd8", "broken UTF-16"),
    ],
)
def test_broken_files_are_refused_with_a_reason(name: str, data: bytes, reason: str) -> None:
    with pytest.raises(ParseError) as err:
        parse(SourceFile(name, data))
    assert reason in str(err.value)


def test_docx_zip_without_word_parts_is_refused() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("hello.txt", "not a word document")
    with pytest.raises(ParseError, match="corrupt DOCX"):
        parse(SourceFile("fake.docx", buf.getvalue()))


def test_pdf_page_limit() -> None:
    with pytest.raises(ParseError, match="MAX_PDF_PAGES"):
        parse(SourceFile("big.pdf", samples.pdf(["a", "b", "c"])), max_pdf_pages=2)


@pytest.mark.parametrize(
    ("data", "text"),
    [
        ("Caf\u00e9 cr\u00e8me".encode(), "Caf\u00e9 cr\u00e8me"),
        ("\ufeffCaf\u00e9".encode(), "Caf\u00e9"),
        ("Caf\u00e9 \u20ac5".encode("utf-16"), "Caf\u00e9 \u20ac5"),
        ("Caf\u00e9 \u20ac5 \u201cquoted\u201d".encode("cp1252"), "Caf\u00e9 \u20ac5 \u201cquoted\u201d"),
    ],
)
def test_encodings_detected(data: bytes, text: str) -> None:
    assert decode(data) == text


def test_markdown_front_matter_becomes_metadata() -> None:
    doc = parse(SourceFile("boots.md", b"---\nlanguage: en\ncategory: boots\nignored: x\n---\n# Boots\n\nWarm."))
    assert doc.meta == {"language": "en", "category": "boots"}
    assert doc.text.strip() == "# Boots\n\nWarm." and doc.title == "Boots"


def _zip(tmp_path: Path, members: dict[str, bytes], name: str = "pack.zip") -> Path:
    path = tmp_path / name
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for member, data in members.items():
            zf.writestr(member, data)
    return path


def test_zip_bombs_traversal_and_pack_limits_are_refused_per_file(tmp_path: Path) -> None:
    archive = _zip(tmp_path, {
        "ok.md": b"# Fine\n\ntext",
        "bomb.txt": b"0" * (8 * 1024 * 1024),
        "../../etc/passwd.md": b"# evil",
        "/abs.md": b"# evil",
    })
    files, errors = collect([archive], max_bytes=16 * 1024 * 1024)
    assert [f.path for f in files] == ["ok.md"]
    reasons = {e.file: e.reason for e in errors}
    assert "zip bomb" in reasons["bomb.txt"]
    assert "unsafe path" in reasons["../../etc/passwd.md"] and "unsafe path" in reasons["/abs.md"]

    folder = tmp_path / "pack"
    folder.mkdir()
    for i in range(4):
        (folder / f"doc{i}.md").write_text(f"# Doc {i}\n\n" + "word " * 50)
    files, errors = collect([folder], max_bytes=10_000, max_pack_files=3)
    assert len(files) == 3 and [e.reason for e in errors] == [
        "the pack is over its limit of 3 files: set SWITCHBOARD_MAX_PACK_FILES higher to take more"]
    files, errors = collect([folder], max_bytes=10_000, max_pack_bytes=600)
    assert len(files) == 2 and all("MAX_PACK_BYTES" in e.reason for e in errors) and len(errors) == 2
