"""Reading a knowledge pack: collect files from folders, zips and single paths, then parse each by type.

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
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

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
# A zip member that expands more than this many times over its compressed size, and to more than 1 MiB, is
# treated as a zip bomb.
ZIP_MAX_RATIO = 200
# Zip members are unpacked this many bytes at a time, so one over its limit costs at most limit + READ_CHUNK.
READ_CHUNK = 64 * 1024
log = logging.getLogger(__name__)
_IGNORED_NAMES = {"__MACOSX", "Thumbs.db", "desktop.ini"}


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


# -- collecting --------------------------------------------------------------------------------------------


def _ignored(parts: tuple[str, ...]) -> bool:
    return any(p.startswith(".") or p in _IGNORED_NAMES for p in parts)


def safe_member_path(name: str) -> str:
    """A zip entry name as a pack path, or ParseError when it could land outside the pack."""
    if "\\" in name or name.startswith("/") or (len(name) > 1 and name[1] == ":") or "\x00" in name:
        raise ParseError("unsafe path in zip (absolute or with backslashes); the entry was not extracted")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise ParseError("unsafe path in zip ('..' would leave the pack); the entry was not extracted")
    return "/".join(parts)


def read_capped(stream: IO[bytes], limit: int, chunk: int = READ_CHUNK) -> bytes | None:
    """All of `stream` if it holds at most `limit` bytes, else None, known as soon as byte limit + 1 arrives:
    nothing past it is read or unpacked. For zip members, whose declared sizes are the archive's claim."""
    data = bytearray()
    while True:
        piece = stream.read(min(chunk, limit + 1 - len(data)))
        if not piece:
            return bytes(data)
        data += piece
        if len(data) > limit:
            return None


def _from_zip(archive: Path, max_bytes: int) -> tuple[list[SourceFile], list[FileError]]:
    """Members read with a cap each: the sizes in a zip's directory are the archive's claim, not a fact."""
    files: list[SourceFile] = []
    errors: list[FileError] = []
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        return [], [FileError(archive.name, f"not a readable zip file ({exc})")]
    with zf:
        members = [m for m in zf.infolist() if not m.is_dir()]
        names = []
        for m in members:
            try:
                names.append(safe_member_path(m.filename))
            except ParseError as exc:
                names.append("")
                errors.append(FileError(m.filename, str(exc)))
        # A zip of a folder ("pack/faq.csv", "pack/shipping.md") gets the same paths as the folder itself.
        tops = {n.split("/")[0] for n in names if n}
        strip = len(tops) == 1 and all("/" in n for n in names if n)
        for member, name in zip(members, names, strict=True):
            if not name or _ignored(tuple(name.split("/"))):
                continue
            path = name.split("/", 1)[1] if strip else name
            if member.file_size > max_bytes:
                errors.append(FileError(path, f"file is {member.file_size} bytes, over the {max_bytes}-byte limit"))
                continue
            if member.file_size > 1024 * 1024 and member.file_size > ZIP_MAX_RATIO * max(member.compress_size, 1):
                errors.append(FileError(path, f"expands {member.file_size // max(member.compress_size, 1)}x when "
                                              "unzipped (a zip bomb?); refused"))
                continue
            try:
                with zf.open(member) as fh:
                    data = read_capped(fh, max_bytes)  # the header's size is not trusted
            except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError, EOFError) as exc:
                errors.append(FileError(path, f"cannot be extracted from the zip ({exc})"))
                continue
            if data is None:
                errors.append(FileError(path, f"file is over the {max_bytes}-byte limit when unzipped"))
                continue
            files.append(SourceFile(path, data))
    return files, errors


def _read_file(path: Path, name: str, max_bytes: int) -> SourceFile | FileError:
    try:
        size = path.stat().st_size
        if size > max_bytes:
            return FileError(name, f"file is {size} bytes, over the {max_bytes}-byte limit")
        return SourceFile(name, path.read_bytes())
    except OSError as exc:
        return FileError(name, f"cannot be read ({exc.strerror or exc})")


def collect(
    paths: list[Path], max_bytes: int, max_pack_bytes: int | None = None, max_pack_files: int | None = None
) -> tuple[list[SourceFile], list[FileError]]:
    """Files from folders (walked, hidden files skipped), zips (unpacked in memory, safely) and single files.
    Two files that would get the same pack path are refused after the first; files past the pack's byte or
    file-count limit are refused one by one, so the pack's first files still go in."""
    files: list[SourceFile] = []
    errors: list[FileError] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames[:] = sorted(d for d in dirnames if not _ignored((d,)))
                for filename in sorted(filenames):
                    full = Path(dirpath, filename)
                    rel = full.relative_to(path).as_posix()
                    if _ignored(tuple(rel.split("/"))):
                        continue
                    if full.suffix.lower() == ".zip":
                        errors.append(FileError(rel, "zips inside a folder are not unpacked: upload the zip itself"))
                        continue
                    item = _read_file(full, rel, max_bytes)
                    (errors if isinstance(item, FileError) else files).append(item)  # type: ignore[arg-type]
        elif path.suffix.lower() == ".zip" and path.is_file():
            got, errs = _from_zip(path, max_bytes)
            files.extend(got)
            errors.extend(errs)
        elif path.is_file():
            item = _read_file(path, path.name, max_bytes)
            (errors if isinstance(item, FileError) else files).append(item)  # type: ignore[arg-type]
        else:
            errors.append(FileError(str(raw), "no such file or folder"))
    unique: dict[str, SourceFile] = {}
    total = 0
    for f in files:
        if f.path in unique:
            errors.append(FileError(f.path, "another file in this upload has the same path; this one was skipped"))
        elif max_pack_files is not None and len(unique) >= max_pack_files:
            errors.append(FileError(f.path, f"the pack is over its limit of {max_pack_files} files: set "
                                            "SWITCHBOARD_MAX_PACK_FILES higher to take more"))
        elif max_pack_bytes is not None and total + len(f.data) > max_pack_bytes:
            errors.append(FileError(f.path, f"the pack is over its limit of {max_pack_bytes} bytes: set "
                                            "SWITCHBOARD_MAX_PACK_BYTES higher to take more"))
        else:
            unique[f.path] = f
            total += len(f.data)
    return list(unique.values()), errors


# -- parsing -----------------------------------------------------------------------------------------------


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
