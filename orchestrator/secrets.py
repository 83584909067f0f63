"""Secrets: ``{{ secrets.NAME }}`` in task inputs, resolved when the attempt
runs, and in the trigger settings a source declares secret (e.g. a webhook's
``secret``), resolved when the source sets the trigger up.

A secret is looked up in the backends in order, the first that knows it wins:

* the environment: ``ORCHESTRATOR_SECRET_<NAME>``;
* a directory of files (``ORCHESTRATOR_SECRETS_DIR``; the Kubernetes / Docker
  secrets layout): the file named ``NAME`` holds the value (one trailing
  newline is dropped);
* any backend a package registers under the entry point group
  ``orchestrator.secrets``: a callable taking the :class:`Settings` and
  returning an object with ``name`` and ``get(secret_name) -> str | None``.

Only the secrets a task's inputs name are read, for each attempt (a rotated
value is picked up by the next attempt). The rendered values never reach
storage: inputs are stored as written (templates), and the worker replaces
every resolved value by ``***`` in the attempt's error, output, transition
reason and captured log (:func:`orchestrator.task_logs.mask`).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol

from orchestrator.errors import NonRetryableError
from orchestrator.templates import referenced_fields

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "orchestrator.secrets"
ENV_PREFIX = "ORCHESTRATOR_SECRET_"
ROOT = "secrets"
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$")


class SecretBackend(Protocol):
    name: str

    def get(self, secret: str) -> str | None:
        """The value of ``secret``, or None when this backend does not hold it."""
        ...


class EnvironmentBackend:
    """``ORCHESTRATOR_SECRET_<NAME>`` (the name as written, else upper-cased)."""

    name = "environment"

    def get(self, secret: str) -> str | None:
        value = os.environ.get(ENV_PREFIX + secret)
        if value is None:
            value = os.environ.get(ENV_PREFIX + secret.upper().replace("-", "_").replace(".", "_"))
        return value


class DirectoryBackend:
    """One file per secret, named as the secret (a mounted Kubernetes secret)."""

    name = "directory"

    def __init__(self, path: Path) -> None:
        self.path = path

    def get(self, secret: str) -> str | None:
        if not NAME.match(secret) or secret in (".", ".."):
            return None
        try:
            text = (self.path / secret).read_text("utf-8")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        return text.removesuffix("\n")


class SecretNotFoundError(NonRetryableError):
    """A task names a secret no backend holds (the name only, never a value)."""

    def __init__(self, secret: str, backends: Sequence[str]) -> None:
        self.secret = secret
        super().__init__(
            f"secret {secret!r} is not set in any secret backend ({', '.join(backends)}); "
            f"set {ENV_PREFIX}{secret} or a file named {secret!r} in ORCHESTRATOR_SECRETS_DIR"
        )


class Secrets:
    """The configured backends, asked in order."""

    def __init__(self, backends: Sequence[SecretBackend]) -> None:
        self.backends = list(backends)

    @classmethod
    def from_settings(cls, settings: Any) -> Secrets:
        backends: list[SecretBackend] = [EnvironmentBackend()]
        directory = getattr(settings, "secrets_dir", None)
        if directory is not None:
            backends.append(DirectoryBackend(Path(directory)))
        for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            try:
                backends.append(ep.load()(settings))
            except Exception as exc:
                log.error("secret backend %r could not be loaded: %s", ep.name, exc)
        return cls(backends)

    def get(self, secret: str) -> str | None:
        for backend in self.backends:
            value = backend.get(secret)
            if value is not None:
                return value
        return None

    def resolve(self, names: Iterable[str]) -> dict[str, str]:
        """The values of ``names``; :class:`SecretNotFoundError` for the first missing."""
        out: dict[str, str] = {}
        for secret in sorted(set(names)):
            value = self.get(secret)
            if value is None:
                raise SecretNotFoundError(secret, [b.name for b in self.backends])
            out[secret] = value
        return out

    def missing(self, names: Iterable[str]) -> list[str]:
        return [secret for secret in sorted(set(names)) if self.get(secret) is None]


#: A trigger setting that names a secret: the whole value is one reference.
_REFERENCE = re.compile(r"\A\{\{\s*secrets\.([A-Za-z_][A-Za-z0-9_.-]{0,127})\s*\}\}\Z")


def secret_reference(value: str) -> str | None:
    """The secret ``value`` names (``{{ secrets.NAME }}``), or None."""
    found = _REFERENCE.match(value)
    return found.group(1) if found else None


class SettingSecretError(SecretNotFoundError):
    """A trigger setting names a secret no backend holds (its name, never a value)."""

    def __init__(self, where: str, secret: str, backends: Sequence[str]) -> None:
        super().__init__(secret, backends)
        self.args = (f"{where}: {self.args[0]}",)


def setting_secret(secrets: Secrets, where: str, secret: str) -> str:
    """The value of the secret a trigger setting names (``where`` says which,
    e.g. ``webhook 'sales' secret``), or :class:`SettingSecretError`."""
    value = secrets.get(secret)
    if value is None:
        raise SettingSecretError(where, secret, [b.name for b in secrets.backends])
    return value


def referenced_secrets(inputs: Any) -> set[str]:
    """The secret names ``{{ secrets.NAME }}`` templates inside ``inputs`` read."""
    return {key for root, key in referenced_fields(inputs) if root == ROOT and key}


def unresolved(workflows: Iterable[Any]) -> list[str]:
    """A warning for each secret a task names that no configured backend holds
    now (``orchestrator validate``; at run time the attempt fails naming it)."""
    from orchestrator.errors import OrchestratorError
    from orchestrator.settings import load_settings

    try:
        settings: Any = load_settings()
    except OrchestratorError:
        settings = None  # validate checks workflows, not settings: use the defaults
    secrets = Secrets.from_settings(settings)
    backends = ", ".join(b.name for b in secrets.backends)
    specs = list(workflows)
    return [
        f"warning: workflow {spec.name!r} task {task.id!r}: secret {name!r} is not set in "
        f"any secret backend ({backends}); attempts of this task will fail until it is"
        for spec in specs
        for task in spec.tasks
        for name in secrets.missing(referenced_secrets(task.inputs))
    ] + [
        f"warning: workflow {spec.name!r} triggers[{index}] ({trigger.source}) {setting}: "
        f"secret {name!r} is not set in any secret backend ({backends}); the trigger "
        "cannot be set up until it is"
        for spec in specs
        for index, trigger in enumerate(spec.triggers)
        for setting, name in sorted(trigger.secret_settings().items())
        if secrets.get(name) is None
    ]


class TaskSecrets:
    """What a worker resolves for each attempt: the secrets its task's inputs
    name (remembered per workflow version and task), read afresh each time."""

    def __init__(self, secrets: Secrets) -> None:
        self.secrets = secrets
        self._names: dict[tuple[str, str], frozenset[str]] = {}

    def for_task(self, version: str, task_id: str, inputs: Any) -> dict[str, str]:
        key = (version, task_id)
        names = self._names.get(key)
        if names is None:
            names = self._names[key] = frozenset(referenced_secrets(inputs))
        return self.secrets.resolve(names) if names else {}
