"""The pipeline's order and each queue's contract have one home each, and everything else follows them."""

from __future__ import annotations

from typing import get_type_hints

import pytest

from shared import envelope, stages
from shared.queues import PIPELINE, next_stage


def test_the_registry_follows_the_pipeline_and_each_stage_reads_its_queues_contract() -> None:
    assert tuple(stages.BY_NAME) == PIPELINE
    for name, stage in stages.BY_NAME.items():
        reads = next(iter(get_type_hints(stage.handle).values()))  # the stage's first parameter
        assert reads is envelope.contract_of(name), name


def test_each_stage_passes_on_to_the_next_and_the_last_has_none() -> None:
    assert [next_stage(stage) for stage in PIPELINE[:-1]] == list(PIPELINE[1:])
    with pytest.raises(ValueError, match="last stage"):
        next_stage(PIPELINE[-1])
