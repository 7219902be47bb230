"""Reading a knowledge pack: collect files from folders, zips and single paths, then parse each by type.

Every problem with one file becomes a `FileError` with a reason a tenant admin can act on; it never stops the
other files. Supported: Markdown (.md, .markdown), plain text (.txt), and FAQs as CSV (question/answer
columns), JSON (a list of {question, answer}, or {"faqs": [...]}) or JSONL (one {question, answer} per line).
"""

from __future__ import annotations

import csv
import io
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

MARKDOWN = (".md", ".markdown")
TEXT = (".txt",)
FAQ = (".csv", ".json", ".jsonl")
SUPPORTED = MARKDOWN + TEXT + FAQ
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
    kind: str  # markdown | text | faq
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


def _from_zip(archive: Path, max_bytes: int) -> tuple[list[SourceFile], list[FileError]]:
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
            try:
                with zf.open(member) as fh:
                    data = fh.read(max_bytes + 1)  # the header's size is not trusted
            except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError) as exc:
                errors.append(FileError(path, f"cannot be extracted from the zip ({exc})"))
                continue
            if len(data) > max_bytes:
                errors.append(FileError(path, f"file is over the {max_bytes}-byte limit"))
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


def collect(paths: list[Path], max_bytes: int) -> tuple[list[SourceFile], list[FileError]]:
    """Files from folders (walked, hidden files skipped), zips (unpacked in memory, safely) and single files.
    Two files that would get the same pack path are refused after the first."""
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
    for f in files:
        if f.path in unique:
            errors.append(FileError(f.path, "another file in this upload has the same path; this one was skipped"))
        else:
            unique[f.path] = f
    return list(unique.values()), errors


# -- parsing -----------------------------------------------------------------------------------------------


def decode(data: bytes) -> str:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ParseError(f"not valid UTF-8 text (byte {exc.start}): save the file as UTF-8") from exc
    if "\x00" in text:
        raise ParseError("looks like a binary file, not text")
    return text.replace("\r\n", "\n").replace("\r", "\n")


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


def parse(source: SourceFile) -> ParsedDocument:
    """One file to a ParsedDocument, or ParseError with the reason."""
    suffix = PurePosixPath(source.path).suffix.lower()
    if suffix not in SUPPORTED:
        shown = suffix or "(no extension)"
        raise ParseError(f"unsupported file type {shown}; supported: {', '.join(SUPPORTED)}")
    if not source.data.strip():
        raise ParseError("file is empty")
    text = decode(source.data)
    if not text.strip():
        raise ParseError("file is empty")
    stem = PurePosixPath(source.path).stem.replace("-", " ").replace("_", " ").strip()
    if suffix in MARKDOWN:
        return ParsedDocument(source.path, "markdown", _markdown_title(text) or stem, text=text)
    if suffix in TEXT:
        return ParsedDocument(source.path, "text", stem, text=text)
    parser = {".csv": _parse_csv, ".json": _parse_json, ".jsonl": _parse_jsonl}[suffix]
    faqs = parser(text)
    if not faqs:
        raise ParseError("no question/answer pairs found")
    return ParsedDocument(source.path, "faq", stem, faqs=faqs, meta={"pairs": len(faqs)})
