"""Keep only the synaptic states RLlib really needs, instead of one F per environment step.

RLlib's new API stack writes every step's STATE_OUT into the episode, then the learner keeps only
every `max_seq_len`-th one as STATE_IN. For an LSTM that costs little; for an STPN the synaptic
memory F is H x D floats (680 KB per step at the Pong size), so a rollout's states dwarf its
frames and are shipped between processes for nothing.

Here the F part of STATE_OUT never enters the episode's per-step columns. A module-to-env piece
moves it to a `SynapticStates` object in `episode.custom_data`, keeping:
- the current F, which the next forward pass needs: one per episode, shared by its chunks and
  never shipped to the learner;
- the F each training sequence of the chunk starts from: the previous chunk's last state for
  the first one (None at an episode's start), then the STATE_OUT of steps m-1, 2m-1, ...
  (m = `max_seq_len`), which is exactly what the learner reads.
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
STATES_KEY = "stpn_synaptic_states"  # the `custom_data` key of an episode chunk's SynapticStates


class _CurrentF:
    """The F after an episode's latest forward pass, shared by all chunks of the episode."""

    __slots__ = ("F",)

    def __init__(self) -> None:
        self.F: np.ndarray | None = None


class SynapticStates:
    """What an episode chunk keeps of F: the start state of each of its training sequences.

    `lookback` is the F the chunk's first sequence starts from (None at an episode's start) and
    `kept[i]` the STATE_OUT F of chunk steps i = m-1, 2m-1, ... (m = `max_seq_len`), from which
    the learner's later sequences start (RLlib's learners append one artificial step to each
    chunk, so the last step's state is needed when the chunk length is a multiple of m). These
    arrays are never written to; a chunk's last `kept` entry is the very array its continuation
    uses as `lookback`, so a 50-step chunk of the paper's Pong setting adds one F, not two.
    `current` holds the episode's live F and is shared by all its chunks; `cut_from` is the
    chunk this one continues, until its F is released (see MoveSynapticStateToEpisode);
    `shipped` says the chunk has been pickled, i.e. sent to another process.
    """

    __slots__ = ("current", "chunk", "lookback", "kept", "cut_from", "shipped", "released")

    def __init__(self, current: _CurrentF | None = None) -> None:
        self.current = current if current is not None else _CurrentF()
        self.chunk: int | None = None  # `t_started` of the chunk the entries below belong to
        self.lookback: np.ndarray | None = None
        self.kept: dict[int, np.ndarray] = {}
        self.cut_from: SynapticStates | None = None
        self.shipped = False
        self.released = False

    def __deepcopy__(self, memo: dict) -> SynapticStates:
        # `SingleAgentEpisode.cut()` deep-copies `custom_data` into the continuation: share the
        # episode's live F and the (read-only) arrays instead of copying 680 KB each.
        other = SynapticStates(self.current)
        other.chunk, other.lookback, other.kept = self.chunk, self.lookback, dict(self.kept)
        other.cut_from = self
        return other

    def __getstate__(self) -> dict:
        # Only the env runner stepping the episode needs the live F: a chunk shipped to the
        # learner carries what the learner reads, not 680 KB more at the Pong size.
        self.shipped = True
        return {"chunk": self.chunk, "lookback": self.lookback, "kept": self.kept}

    def __setstate__(self, state: dict) -> None:
        self.__init__()
        self.chunk, self.lookback, self.kept = state["chunk"], state["lookback"], state["kept"]


def _missing_state(ep: Any) -> RuntimeError:
    states = ep.custom_data.get(STATES_KEY)
    if states is not None and states.released:
        why = "were released after the chunk had been shipped and its episode went on"
    else:
        why = "are missing (was it sampled without rllib_stpn's compact state storage?)"
    return RuntimeError(
        f"the synaptic states of episode {ep.id_} (chunk from t={ep.t_started}) {why}; set "
        "RLLIB_STPN_COMPACT_STATES=0 before ray.init to use RLlib's default path throughout"
    )


def _single_module(rl_module: Any, sa_episode: Any) -> Any:
    if isinstance(rl_module, MultiRLModule):
        return rl_module[sa_episode.module_id or DEFAULT_MODULE_ID]
    return rl_module


class MoveSynapticStateToEpisode(ConnectorV2):
    """Module-to-env: takes F out of STATE_OUT and keeps what is needed (see SynapticStates).

    RLlib's env runner also keeps every chunk it has returned until the episode ends, for its
    episode metrics. A chunk that has been pickled (a remote env runner's `sample()` result,
    or episodes sent to a remote learner) went out with its F, so when its episode's next chunk
    starts, the F it kept here is dropped: memory then no longer grows with the steps of an
    episode. Chunks handed on by reference (a local env runner and learner) keep theirs.
    """

    def __call__(self, *, rl_module, batch, episodes, explore=None, shared_data=None, **kwargs):
        state_out = batch.get(Columns.STATE_OUT)
        if not isinstance(state_out, dict) or F_KEY not in state_out:
            return batch
        F = state_out.pop(F_KEY)  # (B, H*D), rows in the order of the stepping episodes
        for i, ep in enumerate(
            self.single_agent_episode_iterator(episodes, agents_that_stepped_only=True)
        ):
            states = ep.custom_data.get(STATES_KEY)
            if states is None:
                states = ep.custom_data[STATES_KEY] = SynapticStates()
            if states.chunk != ep.t_started:
                # The first forward pass of an episode or of a chunk continued after a cut.
                previous = states.current.F  # the previous chunk's last STATE_OUT
                if ep.t_started == 0:
                    states.lookback = None
                elif previous is None:
                    raise _missing_state(ep)
                else:
                    # A row of the last batch is copied, so that it does not keep the whole
                    # batch alive; an array of its own (a `kept` entry) is shared.
                    states.lookback = previous if previous.base is None else previous.copy()
                states.chunk = ep.t_started
                states.kept = {}
                returned, states.cut_from = states.cut_from, None
                if returned is not None and returned.shipped:
                    returned.lookback, returned.kept, returned.released = None, {}, True
            index = len(ep)  # the chunk index this STATE_OUT will be stored at
            f = F[i]
            if (index + 1) % _single_module(rl_module, ep).model_config["max_seq_len"] == 0:
                f = states.kept[index] = f.copy()
            states.current.F = f
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
            states = ep.custom_data.get(STATES_KEY)
            if ep.t_started == 0 and len(ep) == 0:
                state = convert_to_numpy(module.get_initial_state())
            elif states is None or states.current.F is None:
                raise _missing_state(ep)
            else:
                state = dict(ep.get_extra_model_outputs(key=Columns.STATE_OUT, indices=-1))
                state[F_KEY] = states.current.F
            self.add_batch_item(batch, Columns.STATE_IN, state, single_agent_episode=ep)

    def _add_training_states(self, rl_module, batch, episodes) -> None:
        for ep in self.single_agent_episode_iterator(episodes, agents_that_stepped_only=False):
            module = _single_module(rl_module, ep)
            if not module.is_stateful():
                continue
            max_seq_len = module.model_config["max_seq_len"]
            states = ep.custom_data.get(STATES_KEY)
            if states is None or states.released or (ep.t_started > 0 and states.lookback is None):
                raise _missing_state(ep)
            if ep.t_started == 0:
                first = convert_to_numpy(module.get_initial_state())
            else:
                first = dict(
                    ep.get_extra_model_outputs(
                        key=Columns.STATE_OUT, indices=-1, neg_index_as_lookback=True
                    )
                )
                first[F_KEY] = states.lookback
            num_seqs = int(math.ceil(len(ep) / max_seq_len))
            starts = [first]
            for k in range(1, num_seqs):
                index = k * max_seq_len - 1
                state = dict(ep.get_extra_model_outputs(key=Columns.STATE_OUT, indices=index))
                state[F_KEY] = states.kept[index]
                starts.append(state)
            stacked = {key: np.stack([s[key] for s in starts]) for key in first}
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
