"""No source file in app/ grows past what fits in one's head (issue 10: ~400 lines). A file that does is split by
responsibility (the orchestrator's lifecycle and its answer path, the Redis bus and its parts), not cut by length."""

from __future__ import annotations

from pathlib import Path

APP = Path(__file__).resolve().parent.parent / "app"
MAX_LINES = 420
SOURCE = {".py", ".js", ".html", ".css", ".j2"}  # code and templates; shipped data files (json, txt) are not read


def test_no_source_file_in_app_is_over_the_limit() -> None:
    sizes = {path: len(path.read_text(encoding="utf-8").splitlines())
             for path in APP.rglob("*") if path.is_file() and path.suffix in SOURCE}
    assert len(sizes) > 100, f"found only {len(sizes)} source files under {APP}: is the walk in the right place?"
    over = sorted(f"{path.relative_to(APP.parent)}: {n} lines" for path, n in sizes.items() if n > MAX_LINES)
    assert over == [], (f"files over {MAX_LINES} lines: split each by responsibility, not by line count\n"
                        + "\n".join(over))
