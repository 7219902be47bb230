"""Reading a knowledge pack's files (collected by app/knowledge/collect.py): each parsed by type.

Every problem with one file becomes a `FileError` with a reason a tenant admin can act on; it never stops the
other files. Supported: Markdown (.md, .markdown), plain text (.txt), HTML (.html, .htm), PDF, DOCX, and FAQs
as CSV (question/answer columns), JSON (a list of {question, answer}, or {"faqs": [...]}) or JSONL (one
{question, answer} per line). Text files may be UTF-8 (with or without BOM), UTF-16 with a BOM, or
Windows-1252; anything else is refused with the encoding named.

Metadata per document (brand, category, language, source_url) comes from Markdown front matter
(`---\nlanguage: en\n---`), from `_metadata.json` at the pack's root ({"path": {...}, "*": {...}}), or from
the upload's own fields; it is stored on the document and on every point, so retrieval can filter on it.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

MARKDOWN = (".md", ".markdown")
TEXT = (".txt",)
FAQ = (".csv", ".json", ".jsonl")
HTML = (".html", ".htm")
PDF = (".pdf",)
DOCX = (".docx",)
SUPPORTED = MARKDOWN + TEXT + FAQ + HTML + PDF + DOCX
METADATA_FILE = "_metadata.json"  # per-document metadata for the pack, not a document
EVAL_FILE = "_eval.jsonl"  # the tenant's evaluation questions, not a document
UNANSWERABLE_FILE = "_unanswerable.jsonl"  # questions the pack must not answer (relevance calibration)
META_FIELDS = ("brand", "category", "language", "source_url")
log = logging.getLogger(__name__)


class ParseError(ValueError):
    """A file that cannot be ingested; the message is the reason shown to the tenant."""


@dataclass(frozen=True)
class FileError:
    file: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"file": self.file, "reason": self.reason}


@dataclass(frozen=True)
class SourceFile:
    path: str  # relative, '/'-separated path inside the pack: the Document.path
    data: bytes


@dataclass
class ParsedDocument:
    path: str
    kind: str  # markdown | text | faq | html | pdf | docx
    title: str
    text: str = ""  # markdown / text body
    faqs: list[tuple[str, str]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


def _mostly_printable(text: str) -> bool:
    controls = sum(1 for ch in text if ord(ch) < 32 and ch not in "\t\n\r\f")
    return controls == 0


def decode(data: bytes) -> str:
    """Text in UTF-8 (BOM or not), UTF-16 (with a BOM), or Windows-1252 when it decodes to printable text."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            text = data.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise ParseError("broken UTF-16 text (it starts with a UTF-16 mark): save the file as UTF-8") from exc
    else:
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            if b"\x00" in data:
                raise ParseError("looks like a binary file, not text") from exc
            try:
                text = data.decode("cp1252")
            except UnicodeDecodeError:
                raise ParseError(
                    f"not UTF-8, UTF-16 or Windows-1252 text (byte {exc.start} is 0x{data[exc.start]:02x}): "
                    "save the file as UTF-8"
                ) from exc
            if not _mostly_printable(text):
                raise ParseError(f"not valid UTF-8 text (byte {exc.start}), nor readable as Windows-1252: "
                                 "save the file as UTF-8") from exc
    if "\x00" in text:
        raise ParseError("looks like a binary file, not text")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def clean_meta(raw: dict[str, Any]) -> dict[str, str]:
    """The known metadata fields with non-empty string values; anything else is dropped."""
    out = {}
    for key in META_FIELDS:
        value = raw.get(key)
        if isinstance(value, str | int | float) and str(value).strip():
            out[key] = str(value).strip()[:500]
    return out


def front_matter(text: str) -> tuple[dict[str, str], str]:
    """`---` delimited `key: value` lines at the top of a Markdown file: (metadata, the rest)."""
    fields, rest = front_matter_fields(text)
    return clean_meta(fields), rest


def front_matter_fields(text: str) -> tuple[dict[str, str], str]:
    """Every `key: value` line of the front matter (keys lower-cased), and the rest of the file."""
    if not text.startswith("---\n"):
        return {}, text
    end = text.find("\n---", 4)
    if end < 0:
        return {}, text
    fields: dict[str, str] = {}
    for line in text[4:end].split("\n"):
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip().lower()] = value.strip().strip("'\"")
    rest = text[end + 4 :]
    return fields, rest.split("\n", 1)[1] if "\n" in rest else ""


def read_metadata(data: bytes) -> dict[str, dict[str, Any]]:
    """`_metadata.json`: {"path in the pack": {"category": ...}, "*": {...applies to all...}}, by path."""
    try:
        raw = json.loads(decode(data))
    except json.JSONDecodeError as exc:
        raise ParseError(f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from exc
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise ParseError('_metadata.json must map file paths (or "*") to objects like {"category": "boots"}')
    default = clean_meta(raw.get("*", {}))
    return {"*": default, **{path: {**default, **clean_meta(v)} for path, v in raw.items() if path != "*"}}


def _faq_pair(item: Any, where: str) -> tuple[str, str]:
    if not isinstance(item, dict):
        raise ParseError(f"{where}: expected an object with 'question' and 'answer'")
    lowered = {str(k).strip().lower(): v for k, v in item.items()}
    question, answer = lowered.get("question"), lowered.get("answer")
    if not isinstance(question, str) or not isinstance(answer, str) or not question.strip() or not answer.strip():
        raise ParseError(f"{where}: needs non-empty 'question' and 'answer' strings")
    return question.strip(), answer.strip()


def _parse_csv(text: str) -> list[tuple[str, str]]:
    reader = csv.reader(io.StringIO(text), strict=True)
    try:
        rows = list(reader)
    except csv.Error as exc:
        raise ParseError(f"malformed CSV at line {reader.line_num}: {exc}") from exc
    if not rows:
        raise ParseError("CSV has no header row")
    header = [h.strip().lower() for h in rows[0]]
    if "question" not in header or "answer" not in header:
        raise ParseError(f"CSV needs 'question' and 'answer' columns; found {', '.join(rows[0]) or 'none'}")
    qi, ai = header.index("question"), header.index("answer")
    pairs = []
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise ParseError(f"malformed CSV at line {line}: {len(row)} columns, the header has {len(header)}")
        pairs.append(_faq_pair({"question": row[qi], "answer": row[ai]}, f"row {line}"))
    return pairs


def _parse_json(text: str) -> list[tuple[str, str]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ParseError(f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from exc
    if isinstance(data, dict) and isinstance(data.get("faqs"), list):
        data = data["faqs"]
    if not isinstance(data, list):
        raise ParseError('JSON FAQ must be a list of {"question", "answer"} objects or {"faqs": [...]}')
    return [_faq_pair(item, f"item {i}") for i, item in enumerate(data, start=1)]


def _parse_jsonl(text: str) -> list[tuple[str, str]]:
    pairs = []
    for line_no, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ParseError(f"invalid JSON on line {line_no}: {exc.msg}") from exc
        pairs.append(_faq_pair(item, f"line {line_no}"))
    return pairs


def _markdown_title(text: str) -> str | None:
    for line in text.split("\n"):
        if line.startswith("# "):
            return line[2:].strip().strip("#").strip() or None
    return None


def parse(source: SourceFile, *, max_pdf_pages: int = 500) -> ParsedDocument:
    """One file to a ParsedDocument, or ParseError with the reason. Whatever a file's bytes make a parser raise
    (a decompression bomb, a parser bug on a fuzzed file) is that file's failure: never the whole pack's."""
    try:
        return _parse(source, max_pdf_pages=max_pdf_pages)
    except ParseError:
        raise
    except Exception as exc:
        log.warning("parser failed on %s", source.path, exc_info=True)
        raise ParseError(f"cannot be read ({exc.__class__.__name__}: {str(exc)[:200]}); check the file, or export "
                         "it again, and upload it again") from exc


def _parse(source: SourceFile, *, max_pdf_pages: int) -> ParsedDocument:
    from app.knowledge import formats

    suffix = PurePosixPath(source.path).suffix.lower()
    if suffix not in SUPPORTED:
        shown = suffix or "(no extension)"
        raise ParseError(f"unsupported file type {shown}; supported: {', '.join(SUPPORTED)}")
    if not source.data.strip():
        raise ParseError("file is empty")
    stem = PurePosixPath(source.path).stem.replace("-", " ").replace("_", " ").strip()
    if suffix in PDF:
        title, body = formats.pdf_to_text(source.data, max_pdf_pages)
        return ParsedDocument(source.path, "pdf", title or stem, text=body)
    if suffix in DOCX:
        title, body = formats.docx_to_markdown(source.data)
        return ParsedDocument(source.path, "docx", title or stem, text=body)
    text = decode(source.data)
    if not text.strip():
        raise ParseError("file is empty")
    if suffix in HTML:
        title, body = formats.html_to_markdown(text)
        return ParsedDocument(source.path, "html", title or _markdown_title(body) or stem, text=body)
    if suffix in MARKDOWN:
        fields, text = front_matter_fields(text)
        if not text.strip():
            raise ParseError("file has front matter but no text")
        # A help-centre export's front matter names the article ("title: How do I return an item?").
        title = (fields.get("title") or "").strip() or _markdown_title(text) or stem
        return ParsedDocument(source.path, "markdown", title[:500], text=text, meta=clean_meta(fields))
    if suffix in TEXT:
        return ParsedDocument(source.path, "text", stem, text=text)
    parser = {".csv": _parse_csv, ".json": _parse_json, ".jsonl": _parse_jsonl}[suffix]
    faqs = parser(text)
    if not faqs:
        raise ParseError("no question/answer pairs found")
    return ParsedDocument(source.path, "faq", stem, faqs=faqs, meta={"pairs": len(faqs)})
