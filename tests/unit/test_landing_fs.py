"""File-system work of the landing zone, on a real temporary directory."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from sources.completeness import Stat
from sources.landing_fs import READ_SIZE, classify_paths, look_many, real_path, sha256_of


def stat_of(path: Path) -> Stat:
    info = path.stat()
    return Stat(info.st_size, info.st_mtime_ns)


def test_the_hash_of_a_file_longer_than_one_read_is_its_sha256(tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    data = os.urandom(3 * READ_SIZE + 17)
    path.write_bytes(data)
    assert sha256_of(str(path), stat_of(path)) == hashlib.sha256(data).hexdigest()
    assert sha256_of(str(path), Stat(len(data) + 1, stat_of(path).mtime_ns)) is None


def test_real_path_resolves_a_linked_directory_like_realpath(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "a.csv").write_bytes(b"x")
    (tmp_path / "link").symlink_to(tmp_path / "real", target_is_directory=True)
    for path in (tmp_path / "real" / "a.csv", tmp_path / "link" / "a.csv"):
        assert real_path(str(path), {}) == os.path.realpath(path)


def test_files_in_a_directory_reached_through_a_link_are_not_taken(tmp_path: Path) -> None:
    root = tmp_path / "zone"
    (root / "in").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    for directory in (root / "in", tmp_path / "outside"):
        for i in range(3):
            (directory / f"f{i}.csv").write_bytes(b"rows")
    (root / "linked").symlink_to(tmp_path / "outside", target_is_directory=True)
    paths = [str(root / d / f"f{i}.csv") for d in ("in", "linked") for i in range(3)]
    found = classify_paths(str(root), paths)
    assert sorted(found.files) == ["in/f0.csv", "in/f1.csv", "in/f2.csv"]
    looks = look_many(str(root), {"in/f0.csv": [], "linked/f0.csv": []})
    assert looks["in/f0.csv"][0] == stat_of(root / "in" / "f0.csv")
    refused = looks["linked/f0.csv"][0]
    assert refused is not None and not isinstance(refused, Stat)
    assert "resolves outside the landing zone" in refused.reason
