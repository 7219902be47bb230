"""A faster form of a regular expression that finds exactly what it finds."""

from __future__ import annotations

import re


def starting_with(first: str, pattern: re.Pattern[str]) -> re.Pattern[str]:
    """`pattern` behind a lookahead for the characters every one of its matches starts with (`first`, a character
    class body such as "abc" or r"\\d", read with the pattern's own flags: case-insensitively for most). The same
    matches, but Python's engine passes every other position at once instead of trying each of the pattern's
    alternatives there: 2-3 times faster on a customer message. tests/assistant/test_fast_paths.py checks each
    `first` against its pattern's possible first characters."""
    return re.compile(f"(?=[{first}])(?:{pattern.pattern})", pattern.flags)
