"""Landing-zone globs as regular expressions, shared by file triggers (routing)
and ``sensor.file`` (waits matched in SQL with ``~``)."""

from __future__ import annotations

import re


def glob_regex(pattern: str) -> re.Pattern[str]:
    """``*`` stays within a directory, ``**/`` spans any number of them."""
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")
