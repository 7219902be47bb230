"""Collecting a knowledge pack's files from folders, zips and single paths, within the pack's limits.

Zips are unpacked in memory and distrusted: an entry whose name would land outside the pack, that expands far
beyond its compressed size, or that is over the file limit once read is refused on its own (a `FileError` with
the reason), never written anywhere. Hidden files and OS litter are skipped. What is collected is parsed by type
in app/knowledge/parse.py.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import IO

from app.knowledge.parse import FileError, ParseError, SourceFile

# A zip member that expands more than this many times over its compressed size, and to more than 1 MiB, is
# treated as a zip bomb.
ZIP_MAX_RATIO = 200
# Zip members are unpacked this many bytes at a time, so one over its limit costs at most limit + READ_CHUNK.
READ_CHUNK = 64 * 1024
_IGNORED_NAMES = {"__MACOSX", "Thumbs.db", "desktop.ini"}


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
