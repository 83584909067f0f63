"""Database URLs: the name, and the same server under another name."""

from __future__ import annotations

import pytest

from orchestrator.store import database_name, with_database
from orchestrator.store.database import redact


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("postgresql://postgres@127.0.0.1:5432/test", "test"),
        # The embedded server is reached through a socket directory named data.
        ("postgresql://postgres:@/orch_t_1?host=/tmp/pg0/data", "orch_t_1"),
        ("postgresql://u:p@h/with%20space?sslmode=disable", "with space"),
    ],
)
def test_the_database_name_is_the_path_never_the_socket_directory(url: str, name: str) -> None:
    assert database_name(url) == name


def test_with_database_keeps_the_socket_directory() -> None:
    url = with_database("postgresql://postgres:@/postgres?host=/tmp/pg0/data", "other")
    assert url == "postgresql://postgres:@/other?host=/tmp/pg0/data"
    assert database_name(url) == "other"


def test_redact_hides_the_password_only() -> None:
    assert redact("postgresql://app:s3cret@db:5432/x") == "postgresql://app:***@db:5432/x"
