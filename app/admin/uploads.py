"""Knowledge uploads: read a multipart body with a byte limit enforced while it streams, and turn its files
(or the members of a zip) into a checked list of (name within the pack, bytes).

Everything here runs before anything is stored or queued, so a refused upload leaves no trace."""

from __future__ import annotations

import io
import posixpath
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser, parse_options_header

from app.config import get_settings

# Used only if the knowledge parser cannot be imported; `supported_suffixes` asks it first.
DEFAULT_SUFFIXES = frozenset({".md", ".markdown", ".txt", ".csv", ".json", ".jsonl", ".html", ".htm", ".pdf", ".docx"})
# A zip may expand to this many times the upload limit, and hold this many files, before it is refused.
ZIP_EXPANSION_LIMIT = 10
ZIP_MAX_MEMBERS = 5_000
# Files that archivers and operating systems add; never knowledge.
_JUNK = ("__MACOSX/", ".DS_Store", "Thumbs.db", "desktop.ini")


class UploadError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class UploadFiles:
    files: list[tuple[str, bytes]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)  # [{file, reason}]


def supported_suffixes() -> frozenset[str]:
    """What the knowledge parser reads; it owns the list, so a new format needs no change here."""
    try:
        from app.knowledge.parse import SUPPORTED
    except ImportError:
        return DEFAULT_SUFFIXES
    return frozenset(SUPPORTED)


def _human(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MiB" if n >= 1024 * 1024 else f"{n} bytes"


async def read_multipart(request: Request, limit: int) -> list[UploadFile]:
    """The file parts of a multipart/form-data body (see `read_form` for the other fields too)."""
    return (await read_form(request, limit))[0]


async def read_form(request: Request, limit: int) -> tuple[list[UploadFile], dict[str, str]]:
    """The file parts and the text fields of a multipart/form-data body. 413 as soon as more than `limit`
    bytes have arrived (or at once, when Content-Length says so), 415 for another content type, 400 for a
    broken body."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise UploadError(
            415,
            "send the files as multipart/form-data (field 'files'), not "
            f"{content_type or 'a body without a content type'!r}",
        )
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise UploadError(413, f"upload is {_human(int(declared))}; the limit is {_human(limit)} (MAX_UPLOAD_BYTES)")

    tail = b""

    async def limited() -> AsyncIterator[bytes]:
        nonlocal tail
        seen = 0
        async for chunk in request.stream():
            seen += len(chunk)
            if seen > limit:
                raise UploadError(413, f"upload exceeds the limit of {_human(limit)} (MAX_UPLOAD_BYTES)")
            tail = (tail + chunk)[-300:]
            yield chunk

    parser = MultiPartParser(request.headers, limited(), max_files=1000, max_fields=100)  # type: ignore[arg-type]
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise UploadError(400, f"malformed multipart body: {exc}") from exc
    # The parser accepts a body cut short; its last part would then be silently incomplete.
    boundary = parse_options_header(content_type)[1].get(b"boundary", b"")
    if not tail.rstrip(b"\r\n").endswith(b"--" + boundary + b"--"):
        raise UploadError(400, "malformed multipart body: the closing boundary is missing (was the upload cut short?)")
    files = [value for _, value in form.multi_items() if isinstance(value, UploadFile)]
    fields = {key: value for key, value in form.multi_items() if isinstance(value, str)}
    return files, fields


def build_options(fields: dict[str, str]) -> dict[str, object]:
    """The job's options from the form: `version_only`, `replace` (true/false) and document metadata
    (`brand`, `category`, `language`, `source_url`) applied to every file that does not set its own."""
    from app.knowledge.parse import META_FIELDS

    def flag(name: str) -> bool:
        value = fields.get(name, "false").strip().lower()
        if value not in ("true", "false", "1", "0", "yes", "no", ""):
            raise UploadError(422, f"form field {name!r} must be true or false, not {value!r}")
        return value in ("true", "1", "yes")

    meta = {k: fields[k].strip()[:500] for k in META_FIELDS if fields.get(k, "").strip()}
    return {"promote": not flag("version_only"), "replace": flag("replace"), "meta": meta}


def _suffix(name: str) -> str:
    return posixpath.splitext(name)[1].lower()


def _safe_name(raw: str) -> str | None:
    """A relative POSIX path without '..', or None when the name tries to leave the pack."""
    name = raw.replace("\\", "/")
    if name.startswith("/") or "\x00" in name or (len(name) > 1 and name[1] == ":"):
        return None
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        return None
    return "/".join(parts)


def _is_junk(name: str) -> bool:
    base = posixpath.basename(name)
    return name.startswith(_JUNK[0]) or base in _JUNK[1:] or base.startswith("._")


def _too_large(name: str, size: int, max_file: int, what: str) -> dict[str, str]:
    return {"file": name, "reason": f"too large: {what} {_human(size)}; the limit for one file is "
                                    f"{_human(max_file)} (MAX_FILE_BYTES)"}


def _unzip(
    label: str, data: bytes, limit: int, max_file: int, suffixes: frozenset[str], out: UploadFiles
) -> None:
    """A zip's members into `out`. Each is refused on its declared size, or while it is being unpacked, as soon
    as it passes `max_file`: no member costs more than max_file + one read chunk of memory."""
    from app.knowledge.collect import read_capped

    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = [m for m in archive.infolist() if not m.is_dir()]
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise UploadError(422, f"{label} is not a readable zip file ({exc})") from exc
    if len(members) > ZIP_MAX_MEMBERS:
        raise UploadError(413, f"{label} holds {len(members)} files; the limit is {ZIP_MAX_MEMBERS}")
    budget = limit * ZIP_EXPANSION_LIMIT
    if sum(m.file_size for m in members) > budget:
        raise UploadError(413, f"{label} expands to more than {_human(budget)}; split it into smaller uploads")
    names = [m.filename for m in members if not _is_junk(m.filename)]
    # A zip of a folder ("pack/faq.csv", "pack/returns.md") names documents without the folder.
    tops = {n.replace("\\", "/").split("/", 1)[0] for n in names}
    strip = len(tops) == 1 and all("/" in n.replace("\\", "/") for n in names)
    for member in members:
        if _is_junk(member.filename):
            continue
        name = _safe_name(member.filename)
        if name is None:
            out.skipped.append({"file": member.filename, "reason": "unsafe path (absolute or '..'); refused"})
            continue
        if strip:
            name = name.split("/", 1)[1]
        if member.flag_bits & 0x1:
            out.skipped.append({"file": name, "reason": "encrypted zip member; upload it unencrypted"})
            continue
        if _suffix(name) not in suffixes:
            out.skipped.append(
                {
                    "file": name,
                    "reason": f"unsupported type {_suffix(name) or '(none)'!r}; "
                    f"supported: {', '.join(sorted(suffixes))}",
                }
            )
            continue
        if member.file_size > max_file:
            out.skipped.append(_too_large(name, member.file_size, max_file, "it unzips to"))
            continue
        try:
            # Read with a cap: the sizes in a zip's directory are the archive's claim, not a fact.
            with archive.open(member) as fh:
                content = read_capped(fh, max_file)
        except (zipfile.BadZipFile, OSError, ValueError, RuntimeError, NotImplementedError, EOFError) as exc:
            out.skipped.append({"file": name, "reason": f"corrupt zip member ({exc})"})
            continue
        if content is None:
            out.skipped.append(_too_large(name, max_file, max_file, "it unzips to more than"))
            continue
        budget -= len(content)
        if budget < 0:
            raise UploadError(413, f"{label} expands to more than {limit * ZIP_EXPANSION_LIMIT} bytes; refused")
        out.files.append((name, content))


async def collect(parts: list[UploadFile], limit: int) -> UploadFiles:
    """Validate the uploaded files: supported types, zips unpacked, unique names. Raises `UploadError`."""
    if not parts:
        raise UploadError(422, "no files in the upload: send one or more files (or a zip) in the form field 'files'")
    suffixes = supported_suffixes()
    max_file = get_settings().max_file_bytes
    out = UploadFiles()
    for part in parts:
        raw_name = part.filename or ""
        # Browsers send a bare name; some clients send a path. Only the file name counts.
        label = posixpath.basename(raw_name.replace("\\", "/"))
        if not label or _safe_name(label) is None:
            raise UploadError(422, f"file name {raw_name!r} is empty or unsafe")
        data = await part.read()
        await part.close()
        if _suffix(label) == ".zip" or (not _suffix(label) and zipfile.is_zipfile(io.BytesIO(data))):
            _unzip(label, data, limit, max_file, suffixes, out)
        elif _suffix(label) in suffixes and len(data) > max_file:
            out.skipped.append(_too_large(label, len(data), max_file, "it is"))
        elif _suffix(label) in suffixes:
            out.files.append((label, data))
        else:
            raise UploadError(
                415,
                f"{label}: unsupported type {_suffix(label) or '(none)'!r}; upload "
                f"{', '.join(sorted(suffixes))} files or a .zip of them",
            )
    for name, data in list(out.files):
        if not data.strip():
            out.files.remove((name, data))
            out.skipped.append({"file": name, "reason": "empty file"})
    if not out.files:
        reasons = "; ".join(f"{s['file']}: {s['reason']}" for s in out.skipped[:5])
        # 415 when the only problem is the files' types, 413 when it is their sizes; 422 when they are empty,
        # unsafe or corrupt.
        wrong_type = bool(out.skipped) and all(s["reason"].startswith("unsupported type") for s in out.skipped)
        too_large = bool(out.skipped) and all(s["reason"].startswith("too large") for s in out.skipped)
        raise UploadError(
            415 if wrong_type else 413 if too_large else 422,
            f"nothing to ingest in this upload{': ' + reasons if reasons else ' (empty zip)'}",
        )
    seen: set[str] = set()
    for name, _ in out.files:
        if name in seen:
            raise UploadError(422, f"two files are named {name!r}; names within a pack must be unique")
        seen.add(name)
    return out
