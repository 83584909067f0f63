"""File-system work of the landing zone, run in threads: walking, classifying
paths (refusing links and escapes), hashing, and moving claimed files.

Pure functions of paths and stat results; the asyncio side lives in
:mod:`sources.files`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import stat as st
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from sources.completeness import Stat, is_ignored

__all__ = [
    "Found",
    "Look",
    "Refusal",
    "choose_target",
    "classify_paths",
    "digest_many",
    "look_many",
    "move_file",
    "real_dir",
    "real_path",
    "walk_tree",
]

log = logging.getLogger(__name__)

#: Bytes read per call while hashing.
READ_SIZE = 1 << 16


@dataclass(frozen=True, slots=True)
class Refusal:
    """A path that is not taken, and why (recorded once as a dead letter)."""

    path: str
    reason: str
    key: str
    """Dead-letter dedup key: the path and what it is (link target, mtime)."""


@dataclass(slots=True)
class Found:
    files: dict[str, Stat | None] = field(default_factory=dict)
    refused: list[Refusal] = field(default_factory=list)


def absolute_in(root: str, rel: str) -> str:
    """``rel`` ("/"-separated, no empty parts: see ``is_ignored``) under ``root``."""
    return root.rstrip(os.sep) + os.sep + rel.replace("/", os.sep)


#: Directory -> its real path, for one pass over many entries (one thread call):
#: every file of a directory shares the answer, worked out once.
RealDirs = dict[str, str]


def real_dir(directory: str, dirs: RealDirs) -> str:
    """``os.path.realpath(directory)``, resolved once per pass."""
    real = dirs.get(directory)
    if real is None:
        real = dirs[directory] = os.path.realpath(directory)
    return real


def real_path(path: str, dirs: RealDirs) -> str:
    """``os.path.realpath`` of a path whose last part is not a symbolic link
    (its lstat says so): its directory's real path and its name."""
    parent, name = os.path.split(path)
    return os.path.join(real_dir(parent, dirs), name)


def is_inside(root: str, path: str) -> bool:
    return path == root or path.startswith(root + os.sep)


def refusal_for(
    root: str, rel: str, info: os.stat_result, dirs: RealDirs | None = None
) -> Refusal | None:
    """Why the entry at ``rel`` (lstat ``info``) is refused, if it is."""
    path = absolute_in(root, rel)
    if st.S_ISLNK(info.st_mode):
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        where = (
            "it resolves outside the landing zone"
            if not is_inside(root, os.path.realpath(path))
            else "only regular files are taken"
        )
        return Refusal(
            rel,
            f"{rel}: symbolic link to {target!r} refused: {where}",
            f"file:refused:{rel}:link:{target}:{info.st_mtime_ns}",
        )
    if not st.S_ISREG(info.st_mode) and not st.S_ISDIR(info.st_mode):
        return Refusal(
            rel,
            f"{rel}: not a regular file (mode {st.filemode(info.st_mode)}): refused",
            f"file:refused:{rel}:mode:{info.st_mode}",
        )
    real = real_path(path, {} if dirs is None else dirs)
    if real != path:
        where = (
            "outside the landing zone" if not is_inside(root, real) else "through a symbolic link"
        )
        return Refusal(
            rel, f"{rel}: resolves {where} (to {real}): refused", f"file:refused:{rel}:real:{real}"
        )
    return None


def walk_tree(root: str, top: str = "") -> Found:
    """Every file under ``root/top`` (links are reported, never followed)."""
    found = Found()
    stack = [top]
    while stack:
        rel_dir = stack.pop()
        try:
            entries = os.scandir(absolute_in(root, rel_dir) if rel_dir else root)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except PermissionError as exc:
            log.warning("landing zone: cannot list %s: %s", rel_dir or ".", exc)
            continue
        with entries:
            for entry in entries:
                rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                if is_ignored(rel):
                    continue
                try:
                    info = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if st.S_ISDIR(info.st_mode):
                    stack.append(rel)
                elif st.S_ISREG(info.st_mode):
                    found.files[rel] = Stat(info.st_size, info.st_mtime_ns)
                else:
                    refused = refusal_for(root, rel, info)
                    if refused is not None:
                        found.refused.append(refused)
    return found


def classify_paths(root: str, paths: Iterable[str]) -> Found:
    """Sort what the watcher reported: files, whole directories moved in, links."""
    found = Found()
    dirs: RealDirs = {}
    prefix = root.rstrip(os.sep) + os.sep
    for path in paths:
        rel = path[len(prefix) :] if path.startswith(prefix) else os.path.relpath(path, root)
        rel = rel.replace(os.sep, "/")
        if rel == "." or rel.startswith("../") or rel == ".." or is_ignored(rel):
            continue
        parent = os.path.dirname(path)
        if real_dir(parent, dirs) != parent:
            continue  # reported through a linked directory: the link itself is refused
        try:
            info = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            continue  # deleted: a pending check of it finds it gone
        if st.S_ISDIR(info.st_mode) and not st.S_ISLNK(info.st_mode):
            sub = walk_tree(root, rel)
            found.files.update(sub.files)
            found.refused.extend(sub.refused)
            continue
        refused = refusal_for(root, rel, info, dirs)
        if refused is not None:
            found.refused.append(refused)
        else:
            found.files[rel] = Stat(info.st_size, info.st_mtime_ns)
    return found


Look = tuple[Stat | Refusal | None, frozenset[str]]


def look_many(root: str, wanted: Mapping[str, Sequence[str]]) -> dict[str, Look]:
    """Each file's stat (None: gone) and which of its markers exist."""
    out: dict[str, Look] = {}
    dirs: RealDirs = {}
    for rel, markers in wanted.items():
        present = frozenset(m for m in markers if os.path.lexists(absolute_in(root, m)))
        try:
            info = os.lstat(absolute_in(root, rel))
        except (FileNotFoundError, NotADirectoryError):
            out[rel] = (None, present)
            continue
        refused = refusal_for(root, rel, info, dirs)
        if refused is None and st.S_ISDIR(info.st_mode):
            out[rel] = (None, present)
        else:
            out[rel] = (refused or Stat(info.st_size, info.st_mtime_ns), present)
    return out


def sha256_of(path: str, expected: Stat | None) -> str | None:
    """The content hash, or None when the file is gone, not regular, or not
    ``expected`` before and after reading (it is still changing)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        before = os.fstat(fd)
        if not st.S_ISREG(before.st_mode):
            return None
        # Plain reads: hashlib.file_digest sets up a 256 KiB buffer per file,
        # which costs more than hashing a small file.
        digest = hashlib.sha256()
        while chunk := os.read(fd, READ_SIZE):
            digest.update(chunk)
        after = os.fstat(fd)
    finally:
        os.close(fd)
    seen = {Stat(i.st_size, i.st_mtime_ns) for i in (before, after)}
    if len(seen) != 1 or (expected is not None and seen != {expected}):
        return None
    return digest.hexdigest()


def digest_many(root: str, ready: Sequence[tuple[str, Stat]]) -> list[tuple[str, Stat, str | None]]:
    return [(rel, stat, sha256_of(absolute_in(root, rel), stat)) for rel, stat in ready]


def choose_target(root: str, rel: str, outcome: str, event_id: int) -> str:
    """``processed/<rel>``, or with the event id before the suffix when taken."""
    target = f"{outcome}/{rel}"
    if not os.path.lexists(absolute_in(root, target)):
        return target
    directory, name = posixpath.split(rel)
    stem, suffix = posixpath.splitext(name)
    return posixpath.join(outcome, directory, f"{stem}.{event_id}{suffix}")


def move_file(
    root: str, rel: str, sha256: str, target: str
) -> Literal["moved", "changed", "missing", "taken"]:
    """Move ``rel`` to ``target`` unless its content changed since the event.

    Link then unlink: the destination is never overwritten, and a crash in
    between is finished by the next attempt (same inode at both names).
    """
    src, dst = absolute_in(root, rel), absolute_in(root, target)
    if not os.path.lexists(src):
        return "moved" if os.path.lexists(dst) else "missing"
    if os.path.lexists(dst):
        if os.path.samefile(src, dst):
            os.unlink(src)
            return "moved"
        return "taken"
    if sha256_of(src, None) != sha256:
        return "changed"
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    try:
        os.link(src, dst, follow_symlinks=False)
    except FileExistsError:
        return "taken"
    except OSError:  # no hard links on this file system: rename, still never overwriting
        if os.path.lexists(dst):
            return "taken"
        os.rename(src, dst)
        return "moved"
    os.unlink(src)
    return "moved"
