"""The garbage collector of an orchestrator process, sized for its hot paths.

CPython's cycle collector runs a young collection every 700 net container
allocations and, every hundred of those, considers a full one that walks every
object alive. An intake batch of a few thousand events allocates that many
dicts and lists within milliseconds, and the process keeps some hundred
thousand long-lived objects (modules, compiled specs, caches): full
collections took a third of the Kafka intake's CPU. Young collections are made
rarer (each then costs more: the work per object is the same) and what is
alive when the process starts is frozen, so a full collection walks only what
was allocated since.

Process-wide, so called by the process's entry points (``orchestrator run``,
``dev``, the bench), not by the library.
"""

from __future__ import annotations

import gc

#: Net container allocations between young collections (CPython's default: 700).
YOUNG_COLLECTION_EVERY = 50_000


def tune_gc() -> None:
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_EVERY, middle, old)
