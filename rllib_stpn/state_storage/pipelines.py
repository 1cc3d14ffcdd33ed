"""The pieces put into pipelines RLlib has built (A2C builds its own this way)."""

from __future__ import annotations

from typing import Any

from ray.rllib.connectors.common import AddStatesFromEpisodesToBatch, BatchIndividualItems

from rllib_stpn.state_storage.connectors import (
    AddSynapticStatesToBatch,
    BatchSynapticStates,
    BatchTrainingSynapticStates,
    MoveSynapticStateToEpisode,
)
from rllib_stpn.state_storage.container import RowStarts, default_row_starts

__all__ = ["install_env_to_module", "install_learner", "install_module_to_env"]


def install_env_to_module(pipeline: Any) -> None:
    """In an env-to-module pipeline built by RLlib: the compact STATE_IN pieces (idempotent)."""
    if any(isinstance(c, AddSynapticStatesToBatch) for c in pipeline.connectors):
        return
    if not any(type(c) is AddStatesFromEpisodesToBatch for c in pipeline.connectors):
        return  # a user-built pipeline without RLlib's default pieces: leave it alone
    pipeline.insert_after(
        AddStatesFromEpisodesToBatch, AddSynapticStatesToBatch(batched_later=True)
    )
    pipeline.remove(AddStatesFromEpisodesToBatch)
    pipeline.insert_after(BatchIndividualItems, BatchSynapticStates())


def install_module_to_env(pipeline: Any, ship_last: bool = True) -> None:
    """In a module-to-env pipeline: move the compact keys out of STATE_OUT first (idempotent).

    `ship_last=False` when the learner never starts a row after a chunk's last step (A2C).
    """
    if not any(isinstance(c, MoveSynapticStateToEpisode) for c in pipeline.connectors):
        pipeline.prepend(MoveSynapticStateToEpisode(ship_last=ship_last))


def install_learner(pipeline: Any, row_starts: RowStarts = default_row_starts) -> None:
    """In a learner pipeline built by RLlib: the compact STATE_IN builder (idempotent)."""
    if any(isinstance(c, AddSynapticStatesToBatch) for c in pipeline.connectors):
        return
    if not any(type(c) is AddStatesFromEpisodesToBatch for c in pipeline.connectors):
        return
    ours = AddSynapticStatesToBatch(
        as_learner_connector=True, row_starts=row_starts, batched_later=True
    )
    pipeline.insert_after(AddStatesFromEpisodesToBatch, ours)
    pipeline.remove(AddStatesFromEpisodesToBatch)
    pipeline.insert_after(BatchIndividualItems, BatchTrainingSynapticStates())
