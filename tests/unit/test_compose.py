"""The compose file and the image: PostgreSQL, Kafka (KRaft) and the orchestrator,
with every piece of state in a volume the container can write, workflows from
the host, a dependency layer that survives source edits, and a health check."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from aiohttp import web

from orchestrator.api import build_app

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return loaded


def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions, in order: (INSTRUCTION, arguments), with
    continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        word, _, rest = (pending + stripped).partition(" ")
        instructions.append((word.upper(), rest.strip()))
        pending = ""
    return instructions


def index_of(instructions: list[tuple[str, str]], word: str, contains: str = "") -> int:
    for i, (w, args) in enumerate(instructions):
        if w == word and contains in args:
            return i
    raise AssertionError(f"no {word} {contains!r} in the Dockerfile")


def volumes_of(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """target -> (source, read-only) for the short ``source:target[:ro]`` syntax."""
    out: dict[str, tuple[str, bool]] = {}
    for spec in service.get("volumes", []):
        source, target, *mode = spec.split(":")
        out[target] = (source, "ro" in mode)
    return out


def test_compose_names_the_three_services_and_wires_them() -> None:
    services = compose()["services"]
    assert set(services) == {"postgres", "kafka", "orchestrator"}
    assert services["kafka"]["image"].startswith("apache/kafka")
    assert "controller" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]  # KRaft
    orch = services["orchestrator"]
    assert orch["build"] == "."
    assert set(orch["depends_on"]) == {"postgres", "kafka"}
    env = orch["environment"]
    assert "@postgres:5432/" in env["ORCHESTRATOR_DATABASE_URL"]
    assert env["ORCHESTRATOR_KAFKA_BOOTSTRAP"] == "kafka:9092"


def test_kafka_keeps_its_log_in_a_named_volume() -> None:
    """Without it `down` + `up` re-creates the log: offsets restart, topic ids change."""
    spec = compose()
    kafka = spec["services"]["kafka"]
    log_dir = kafka["environment"]["KAFKA_LOG_DIRS"]
    # The directory the apache/kafka image creates for data, owned by its user
    # (its own default, /tmp/kraft-combined-logs, is in no volume).
    assert log_dir == "/var/lib/kafka/data"
    source, read_only = volumes_of(kafka)[log_dir]
    assert source in spec["volumes"] and not read_only
    postgres = spec["services"]["postgres"]
    assert volumes_of(postgres)["/var/lib/postgresql/data"][0] in spec["volumes"]


def test_the_landing_volume_is_created_in_the_image_and_owned_by_its_user() -> None:
    """A volume mounted where the image has no directory belongs to root, and the
    orchestrator (not root) could not move files to processed/."""
    spec = compose()
    orch = spec["services"]["orchestrator"]
    landing = orch["environment"]["ORCHESTRATOR_LANDING_DIR"]
    source, read_only = volumes_of(orch)[landing]
    assert source in spec["volumes"] and not read_only
    steps = dockerfile()
    user = steps[index_of(steps, "USER")][1]
    made = index_of(steps, "RUN", f"mkdir -p {landing}")
    run = steps[made][1]
    assert f"{landing}/processed" in run and f"{landing}/failed" in run
    assert re.search(rf"chown -R {user}:{user} {re.escape(landing)}\b", run), run
    # Created and owned before the VOLUME line (later changes to a volume path
    # are discarded) and before the build stops running as root.
    volume = index_of(steps, "VOLUME", landing)
    assert made < volume < index_of(steps, "USER")
    assert index_of(steps, "RUN", f"useradd --create-home {user}") < made


def test_workflows_are_mounted_from_the_host_read_only() -> None:
    orch = compose()["services"]["orchestrator"]
    path = orch["environment"]["ORCHESTRATOR_WORKFLOWS_PATH"]
    source, read_only = volumes_of(orch)[path]
    assert read_only
    assert (ROOT / source).is_dir() and any((ROOT / source).glob("*.yaml"))
    # The command takes the path from the setting (no --path baked in), and the
    # image itself defaults to the same place.
    assert "--path" not in orch.get("command", [])
    steps = dockerfile()
    assert f"ORCHESTRATOR_WORKFLOWS_PATH={path}" in steps[index_of(steps, "ENV")][1]
    assert steps[index_of(steps, "CMD")][1] == '["orchestrator", "run"]'


def test_dependencies_are_installed_in_a_layer_before_the_source_is_copied() -> None:
    steps = dockerfile()
    deps = index_of(steps, "RUN", "pip install")
    copied_before = [args for word, args in steps[:deps] if word in ("COPY", "ADD")]
    assert copied_before == ["pyproject.toml README.md ./"]
    source = index_of(steps, "COPY", "orchestrator ./orchestrator")
    assert deps < source
    # The source itself is then installed without resolving dependencies again.
    assert "--no-deps" in steps[index_of(steps, "RUN", "pip install --no-cache-dir --no-deps")][1]
    assert source < index_of(steps, "RUN", "--no-deps")


def test_dockerignore_keeps_state_caches_and_history_out_of_the_build() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for entry in (".git", ".orchestrator", "landing", "**/__pycache__", ".venv", "tests"):
        assert entry in ignored, entry
    # Nothing the image needs is ignored.
    for needed in ("orchestrator", "sources", "handlers", "examples", "pyproject.toml"):
        assert needed not in ignored, needed


def healthcheck_command() -> list[str]:
    steps = dockerfile()
    args = steps[index_of(steps, "HEALTHCHECK")][1]
    command = json.loads(args[args.index("CMD") + len("CMD") :])
    assert isinstance(command, list)
    return [str(part) for part in command]


def test_the_healthcheck_calls_an_existing_route_with_python() -> None:
    command = healthcheck_command()
    assert command[0] == "python" and "curl" not in " ".join(command)
    app = build_app(
        cast(Any, None), cast(Any, None), authenticator=cast(Any, None), max_body_bytes=1024
    )
    routes = {r.canonical for r in app.router.resources()}
    called = re.findall(r"/[a-z]+\b", command[-1])
    assert "/healthz" in called and "/healthz" in routes


async def test_the_healthcheck_passes_against_a_live_server_and_fails_without_one() -> None:
    """Run the image's health check command (with this interpreter) against the
    real /healthz route, then against a port nobody listens on."""
    app = build_app(
        cast(Any, None), cast(Any, None), authenticator=cast(Any, None), max_body_bytes=1024
    )
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        command = [sys.executable, *healthcheck_command()[1:]]

        async def check(on_port: int) -> int:
            env = {**os.environ, "ORCHESTRATOR_HTTP_PORT": str(on_port)}
            proc = await asyncio.create_subprocess_exec(
                *command,
                env=env,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            return await asyncio.wait_for(proc.wait(), timeout=30)

        assert await check(port) == 0
    finally:
        await runner.cleanup()
    assert await check(port) != 0


def _compose_cli() -> list[str] | None:
    """``docker compose`` (the plugin) or ``docker-compose``, when installed;
    ``config`` needs no running engine."""
    if shutil.which("docker"):
        probe = subprocess.run(
            ["docker", "compose", "version"], capture_output=True, timeout=30, check=False
        )
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_docker_compose_accepts_the_file() -> None:
    cli = _compose_cli()
    if cli is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    done = subprocess.run(
        [*cli, "-f", str(ROOT / "compose.yaml"), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, f"{shlex.join(cli)} config: {done.stderr}"
