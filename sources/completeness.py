"""When a landing-zone file counts as arrived: pure decisions, no file system.

The landing source gathers facts (a file's size and mtime, which marker files
exist) and asks :func:`judge` whether the file is complete. Time is passed in
(``now``, seconds on the source's clock), so every rule here is unit-tested without a
clock or a disk.

Rules:

- Temporary names are never looked at: ``*.tmp``, ``*.part``, dotfiles, and
  anything inside a dot-directory. Writers use them to write, then rename into
  place. ``processed/`` and ``failed/`` (where finished files are moved) are
  skipped too.
- A ``quiet`` trigger: size and mtime unchanged for ``quiet_s``, *observed*
  across checks. An old mtime alone proves nothing (``cp -p`` and rsync keep
  the source's mtime while still writing), so the file must be seen twice
  (what the watcher or a scan saw counts as the first look).
- A ``marker`` trigger: a marker file exists in the same directory, ``_SUCCESS``
  for the whole directory or ``{name}.done`` for one file. Marker files are
  never events themselves.
- Several triggers may match one file, and one event starts all of them, so
  the file is complete only when *every* matching trigger says so: all their
  markers exist and the longest quiet period has passed.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from sources.models import FileTrigger

__all__ = [
    "MOVED_DIRS",
    "MarkerNames",
    "Observation",
    "Rule",
    "Stat",
    "Verdict",
    "is_ignored",
    "judge",
    "render_marker",
]

TEMP_SUFFIXES = (".tmp", ".part")
#: Top-level directories the landing source moves finished files into.
MOVED_DIRS = frozenset({"processed", "failed"})
NAME_PLACEHOLDER = "{name}"


def is_ignored(relative_path: str) -> bool:
    """True for names that are not (yet) files to take: temporary names,
    dotfiles, anything inside a dot-directory, and the move targets."""
    parts = relative_path.split("/")
    if not parts or parts[0] in MOVED_DIRS:
        return True
    if any(not p or p.startswith(".") for p in parts):
        return True
    return parts[-1].endswith(TEMP_SUFFIXES)


def render_marker(template: str, name: str) -> str | None:
    """The marker's file name for the file ``name``, or None when the template
    does not name a file in the same directory (``a/b``, ``..``, empty)."""
    rendered = template.replace(NAME_PLACEHOLDER, name)
    if not rendered or "/" in rendered or rendered in {".", ".."}:
        return None
    return rendered


class MarkerNames:
    """Recognises marker files of every marker-mode trigger, so they never
    become events of their own."""

    def __init__(self, triggers: Iterable[FileTrigger]) -> None:
        patterns = set()
        for trigger in triggers:
            if trigger.complete_when != "marker":
                continue
            pieces = trigger.marker.split(NAME_PLACEHOLDER)
            patterns.add(".+".join(re.escape(p) for p in pieces))
        self._regex = (
            re.compile("|".join(f"(?:{p})" for p in sorted(patterns))) if patterns else None
        )

    def matches(self, relative_path: str) -> bool:
        if self._regex is None:
            return False
        return self._regex.fullmatch(posixpath.basename(relative_path)) is not None


@dataclass(frozen=True, slots=True)
class Rule:
    """What every trigger matching one file requires, merged."""

    quiet_s: float | None
    """Size and mtime must hold this long; None: no quiet period is required."""
    markers: tuple[str, ...] = ()
    """Marker templates (``_SUCCESS``, ``{name}.done``) that must all exist."""

    @classmethod
    def for_triggers(cls, triggers: Collection[FileTrigger], *, default_quiet_s: float) -> Rule:
        """The merged rule; a file no trigger matches is still recorded (a
        sensor may wait for it later) once quiet for ``default_quiet_s``."""
        if not triggers:
            return cls(quiet_s=default_quiet_s)
        quiet = [t.quiet_s for t in triggers if t.complete_when == "quiet"]
        markers = sorted({t.marker for t in triggers if t.complete_when == "marker"})
        return cls(quiet_s=max(quiet) if quiet else None, markers=tuple(markers))

    def marker_paths(self, relative_path: str) -> dict[str, str | None]:
        """Template -> the marker's relative path (None when the template is invalid)."""
        if not self.markers:
            return {}  # the common case, asked for every file looked at
        directory, name = posixpath.split(relative_path)
        out: dict[str, str | None] = {}
        for template in self.markers:
            rendered = render_marker(template, name)
            out[template] = None if rendered is None else posixpath.join(directory, rendered)
        return out


@dataclass(frozen=True, slots=True)
class Stat:
    size: int
    mtime_ns: int


@dataclass(frozen=True, slots=True)
class Observation:
    """The file as last seen, and since when it has looked like that."""

    stat: Stat
    since: float


@dataclass(frozen=True, slots=True)
class Verdict:
    complete: bool
    observation: Observation
    check_at: float | None
    """When to look again; None: only when something changes in the directory
    (a marker is missing) or at the next rescan."""
    waiting_for: str
    """Why it is not complete yet (empty when it is)."""


def judge(
    rule: Rule,
    previous: Observation | None,
    stat: Stat,
    present_markers: Collection[str],
    now: float,
    *,
    relative_path: str,
) -> Verdict:
    """Decide whether the file (seen now as ``stat``) is complete.

    ``present_markers`` holds the relative paths of marker files that exist;
    ``previous`` is what the last check saw (None on the first look).
    """
    if previous is not None and previous.stat == stat:
        observation = previous
    else:
        observation = Observation(stat, now)
    missing = []
    for template, path in rule.marker_paths(relative_path).items():
        if path is None:
            missing.append(f"{template!r} (not a file name in the same directory)")
        elif path not in present_markers:
            missing.append(path)
    if missing:
        return Verdict(False, observation, None, "marker " + ", ".join(missing))
    if rule.quiet_s is None or rule.quiet_s <= 0:
        return Verdict(True, observation, None, "")
    quiet_until = observation.since + rule.quiet_s
    if previous is not None and observation is previous and now >= quiet_until:
        return Verdict(True, observation, None, "")
    return Verdict(
        False, observation, quiet_until, f"size and mtime unchanged for {rule.quiet_s:g}s"
    )
