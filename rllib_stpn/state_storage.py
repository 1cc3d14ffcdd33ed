"""Keep only the synaptic states RLlib really needs, instead of one F per environment step.

RLlib's new API stack writes every step's STATE_OUT into the episode, then the learner keeps only
every `max_seq_len`-th one as STATE_IN. For an LSTM that costs little; for an STPN the synaptic
memory F is H x D floats (680 KB per step at the Pong size), so a rollout's states dwarf its
frames and are shipped between processes for nothing.

Here the F part of STATE_OUT never enters the episode's per-step columns. A module-to-env piece
moves it to `episode.custom_data`, keeping:
- the current F, which the next forward pass needs;
- the F the chunk started from (the previous chunk's last state), for the learner's first
  sequence of a continued episode;
- the F of every step whose STATE_OUT the learner reads: steps m-1, 2m-1, ... of the chunk.
Two replacements of RLlib's `AddStatesFromEpisodesToBatch` (env-to-module and learner) put F
back, so the module and the training batch see exactly the STATE_IN of RLlib's default path.

`install()` (run on `import rllib_stpn`) wraps the three `AlgorithmConfig.build_*_connector`
methods so that this happens by default for every single-agent config whose module is an
`STPNModel` with an STPN core; any other config gets RLlib's pipelines unchanged.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
from ray.rllib.algorithms.algorithm_config import AlgorithmConfig
from ray.rllib.connectors.common.add_states_from_episodes_to_batch import (
    AddStatesFromEpisodesToBatch,
)
from ray.rllib.connectors.connector_v2 import ConnectorV2
from ray.rllib.connectors.module_to_env import TensorToNumpy
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.multi_rl_module import MultiRLModule
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.utils.numpy import convert_to_numpy

F_KEY = "F"
_CURRENT = "stpn_F_current"  # F after the latest forward pass
_LOOKBACK = "stpn_F_lookback"  # F this chunk started from (None at an episode's start)
_KEPT = "stpn_F_kept"  # {chunk index: F} of the STATE_OUTs the learner reads
_CHUNK = "stpn_F_chunk"  # `t_started` of the chunk these entries belong to


def _single_module(rl_module: Any, sa_episode: Any) -> Any:
    if isinstance(rl_module, MultiRLModule):
        return rl_module[sa_episode.module_id or DEFAULT_MODULE_ID]
    return rl_module


class MoveSynapticStateToEpisode(ConnectorV2):
    """Module-to-env: takes F out of STATE_OUT and keeps what is needed in `custom_data`."""

    def __call__(self, *, rl_module, batch, episodes, explore=None, shared_data=None, **kwargs):
        state_out = batch.get(Columns.STATE_OUT)
        if not isinstance(state_out, dict) or F_KEY not in state_out:
            return batch
        F = state_out.pop(F_KEY)  # (B, H*D), rows in the order of the stepping episodes
        for i, ep in enumerate(
            self.single_agent_episode_iterator(episodes, agents_that_stepped_only=True)
        ):
            data = ep.custom_data
            if data.get(_CHUNK) != ep.t_started:
                # First forward pass of a new episode or of a chunk continued after a cut
                # (`cut()` deep-copies custom_data, so the last F is carried over).
                data[_LOOKBACK] = data.get(_CURRENT) if ep.t_started > 0 else None
                data[_KEPT] = {}
                data[_CHUNK] = ep.t_started
            f = F[i]
            data[_CURRENT] = f
            index = len(ep)  # the chunk index this STATE_OUT will be stored at
            max_seq_len = _single_module(rl_module, ep).model_config["max_seq_len"]
            if (index + 1) % max_seq_len == 0:
                data[_KEPT][index] = f.copy()  # a copy: the row must not pin the whole batch
        return batch


class AddSynapticStatesToBatch(AddStatesFromEpisodesToBatch):
    """RLlib's STATE_IN builder, reading F from `custom_data` instead of every step's output."""

    def __call__(self, *, rl_module, batch, episodes, explore=None, shared_data=None, **kwargs):
        if rl_module is None or not rl_module.is_stateful() or Columns.STATE_IN in batch:
            return batch
        if self._as_learner_connector:
            self._add_training_states(rl_module, batch, episodes)
        else:
            self._add_next_states(rl_module, batch, episodes)
        return batch

    def _add_next_states(self, rl_module, batch, episodes) -> None:
        for ep in self.single_agent_episode_iterator(episodes, agents_that_stepped_only=True):
            module = _single_module(rl_module, ep)
            if (ep.t_started == 0 and len(ep) == 0) or _CURRENT not in ep.custom_data:
                state = convert_to_numpy(module.get_initial_state())
            else:
                state = dict(ep.get_extra_model_outputs(key=Columns.STATE_OUT, indices=-1))
                state[F_KEY] = ep.custom_data[_CURRENT]
            self.add_batch_item(batch, Columns.STATE_IN, state, single_agent_episode=ep)

    def _add_training_states(self, rl_module, batch, episodes) -> None:
        for ep in self.single_agent_episode_iterator(episodes, agents_that_stepped_only=False):
            module = _single_module(rl_module, ep)
            if not module.is_stateful():
                continue
            max_seq_len = module.model_config["max_seq_len"]
            data = ep.custom_data
            if ep.t_started == 0 or data.get(_LOOKBACK) is None:
                first = convert_to_numpy(module.get_initial_state())
            else:
                first = dict(
                    ep.get_extra_model_outputs(
                        key=Columns.STATE_OUT, indices=-1, neg_index_as_lookback=True
                    )
                )
                first[F_KEY] = data[_LOOKBACK]
            num_seqs = int(math.ceil(len(ep) / max_seq_len))
            states = [first]
            for k in range(1, num_seqs):
                index = k * max_seq_len - 1
                state = dict(ep.get_extra_model_outputs(key=Columns.STATE_OUT, indices=index))
                state[F_KEY] = data[_KEPT][index]
                states.append(state)
            stacked = {key: np.stack([s[key] for s in states]) for key in first}
            self.add_n_batch_items(
                batch=batch,
                column=Columns.STATE_IN,
                items_to_add=stacked,
                num_items=num_seqs,
                single_agent_episode=ep,
            )


def uses_compact_states(config: AlgorithmConfig) -> bool:
    """True for single-agent configs whose module is an STPNModel with an STPN core.

    Setting the environment variable RLLIB_STPN_COMPACT_STATES=0 (before `ray.init`, so that
    Ray's workers inherit it) restores RLlib's default path, e.g. to compare the two.
    """
    from rllib_stpn.rl_module import STPNModel

    if (
        os.environ.get("RLLIB_STPN_COMPACT_STATES", "1") == "0"
        or config.is_multi_agent
        or not (
            config.add_default_connectors_to_env_to_module_pipeline
            and config.add_default_connectors_to_module_to_env_pipeline
            and config.add_default_connectors_to_learner_pipeline
        )
    ):
        return False
    spec = config._rl_module_spec
    if not isinstance(spec, RLModuleSpec) or not isinstance(spec.module_class, type):
        return False
    if not issubclass(spec.module_class, STPNModel):
        return False
    return (spec.model_config or {}).get("core", "stpn") in ("stpn", "stpnf")


def _replace_state_connector(pipeline, as_learner_connector: bool) -> None:
    # `insert_after`/`remove` match the exact class, so our subclass is left in place.
    ours = AddSynapticStatesToBatch(as_learner_connector=as_learner_connector)
    pipeline.insert_after(AddStatesFromEpisodesToBatch, ours)
    pipeline.remove(AddStatesFromEpisodesToBatch)


def install() -> None:
    """Wrap AlgorithmConfig's connector builders (idempotent)."""
    if getattr(AlgorithmConfig, "_rllib_stpn_compact_states", False):
        return
    build_e2m = AlgorithmConfig.build_env_to_module_connector
    build_m2e = AlgorithmConfig.build_module_to_env_connector
    build_learner = AlgorithmConfig.build_learner_connector

    def build_env_to_module_connector(self, *args, **kwargs):
        pipeline = build_e2m(self, *args, **kwargs)
        if uses_compact_states(self):
            _replace_state_connector(pipeline, as_learner_connector=False)
        return pipeline

    def build_module_to_env_connector(self, *args, **kwargs):
        pipeline = build_m2e(self, *args, **kwargs)
        if uses_compact_states(self):
            # Right after TensorToNumpy the batch still has one row per stepping episode.
            pipeline.insert_after(TensorToNumpy, MoveSynapticStateToEpisode())
        return pipeline

    def build_learner_connector(self, *args, **kwargs):
        pipeline = build_learner(self, *args, **kwargs)
        if uses_compact_states(self):
            _replace_state_connector(pipeline, as_learner_connector=True)
        return pipeline

    for fn, orig in [
        (build_env_to_module_connector, build_e2m),
        (build_module_to_env_connector, build_m2e),
        (build_learner_connector, build_learner),
    ]:
        fn.__doc__ = orig.__doc__
        fn.__wrapped__ = orig
        setattr(AlgorithmConfig, orig.__name__, fn)
    AlgorithmConfig._rllib_stpn_compact_states = True
