"""``source: dataset``: a workflow started by updates of datasets.

``any: [URI, ...]`` starts a run per update of any of them; ``all: [URI, ...]``
starts one once each of them has been updated since the trigger's last run (in
any order; an update repeated before that run counts once, and is linked to
the run all the same). With ``partition: true`` only updates of the same
logical date count together, and the run gets that logical date. A URI may
hold ``*`` (any characters but ``/``) and ``**`` (any characters).

The trigger's ``filter`` and ``params`` see the update that completed it::

    {"payload": <the update's metadata>, "headers": {},
     "meta": {"uri", "logical_date", "workflow", "run_id", "task_id",
              "dataset_event_id", "updates": [{"uri", "logical_date", "metadata", ...}]}}

Datasets are the engine's own event source (their updates come from task
successes in its commits), so its plugin, :data:`PLUGIN`, is built in: every
:func:`~orchestrator.plugins.source_registry` has it, installed packages or
not. The updates are routed by :mod:`orchestrator.datasets`, in the
transaction that records them.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from orchestrator.dataset_refs import URI_PATTERN
from orchestrator.globs import glob_regex
from orchestrator.plugins import SourcePlugin
from orchestrator.trigger_spec import Trigger

__all__ = ["PLUGIN", "DatasetPlugin", "DatasetTrigger"]

URIList = tuple[str, ...]


class DatasetTrigger(Trigger):
    """Updates of datasets, by URI."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    source: Literal["dataset"] = "dataset"
    any_of: URIList = Field(default=(), alias="any", max_length=100)
    """A run per update of any of these."""
    all_of: URIList = Field(default=(), alias="all", max_length=100)
    """A run once every one of these was updated since the trigger's last run."""
    partition: bool = False
    """Count only updates of the same logical date together; the run gets it."""

    @field_validator("any_of", "all_of")
    @classmethod
    def _uris(cls, value: URIList) -> URIList:
        for uri in value:
            if not URI_PATTERN.match(uri) or "{{" in uri:
                raise ValueError(f"{uri!r} is not a dataset URI (scheme://..., no templates)")
        if len(set(value)) != len(value):
            raise ValueError("a URI is listed twice")
        return value

    @model_validator(mode="after")
    def _one_list(self) -> DatasetTrigger:
        if bool(self.any_of) == bool(self.all_of):
            raise ValueError("give exactly one of 'any' and 'all', a list of dataset URIs")
        return self

    @property
    def uris(self) -> URIList:
        return self.any_of or self.all_of

    def slots_of(self, uri: str) -> list[int]:
        """Positions of the trigger's URIs that ``uri`` matches."""
        return [i for i, pattern in enumerate(_patterns(self.uris)) if pattern.match(uri)]

    def target(self) -> str:
        kind = "any of" if self.any_of else "all of"
        return f"{kind} {', '.join(self.uris)}" + (" (same logical date)" if self.partition else "")


_cache: dict[URIList, tuple[re.Pattern[str], ...]] = {}


def _patterns(uris: URIList) -> tuple[re.Pattern[str], ...]:
    found = _cache.get(uris)
    if found is None:
        found = tuple(
            glob_regex(uri) if "*" in uri else re.compile(re.escape(uri) + r"\Z") for uri in uris
        )
        if len(_cache) < 4096:
            _cache[uris] = found
    return found


class DatasetPlugin(SourcePlugin):
    """``source: dataset``; its HTTP routes are the core's
    (:mod:`orchestrator.api_datasets`)."""

    triggers = (DatasetTrigger,)
    looked_up_first = ("dataset",)


PLUGIN = DatasetPlugin()
