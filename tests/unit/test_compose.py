"""The compose file parses and runs PostgreSQL, Kafka (KRaft) and the orchestrator."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_compose_names_the_three_services_and_wires_them() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "kafka", "orchestrator"}
    assert services["kafka"]["image"].startswith("apache/kafka")
    assert "controller" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]  # KRaft
    orch = services["orchestrator"]
    assert orch["build"] == "."
    assert set(orch["depends_on"]) == {"postgres", "kafka"}
    env = orch["environment"]
    assert "@postgres:5432/" in env["ORCHESTRATOR_DATABASE_URL"]
    assert env["ORCHESTRATOR_KAFKA_BOOTSTRAP"] == "kafka:9092"
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "pip install" in dockerfile and "orchestrator" in dockerfile
