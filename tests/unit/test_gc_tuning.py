from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from orchestrator.gc_tuning import YOUNG_COLLECTION_EVERY, tune_gc


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restored_gc")
def test_young_collections_are_rarer_and_what_lives_at_start_is_frozen() -> None:
    _, middle, old = gc.get_threshold()
    tune_gc()
    assert gc.get_threshold() == (YOUNG_COLLECTION_EVERY, middle, old)
    assert gc.get_freeze_count() > 0
    assert gc.isenabled()
