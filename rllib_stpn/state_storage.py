"""Keep only the synaptic states RLlib really needs, instead of one F per environment step.

RLlib's new API stack writes every step's STATE_OUT into the episode, then the learner keeps only
the state each training sequence starts from. For an LSTM that costs little; for an STPN the
synaptic memory F is H x D floats (680 KB per step at the Pong size), so a rollout's states dwarf
its frames and are shipped between processes for nothing.

Here the large state keys of a module (`module.compact_state_keys`: F for the STPN cores) never
enter the episode's per-step columns. A module-to-env piece moves them to a `SynapticStates`
object in `episode.custom_data`, keeping:
- the current value, which the next forward pass needs: one per episode, shared by its chunks and
  never shipped to the learner;
- the value each training sequence of the chunk starts from: the previous chunk's last state for
  the first one (None at an episode's start), then the STATE_OUT of steps m-1, 2m-1, ...
  (m = `max_seq_len`), which is what the learner reads.
Replacements of RLlib's `AddStatesFromEpisodesToBatch` (env-to-module and learner) put them back,
so the module and the training batch see exactly the STATE_IN of RLlib's default path.

Nothing here changes RLlib's classes. `A2CConfig` builds its pipelines with these pieces (see
`install_env_to_module` and friends); any other algorithm opts in with `compact_states(config)`,
which adds them as the config's custom connectors, so they travel with the config to every
process. A module with `model_config["compact_states"] = False`, or without large state keys,
gets RLlib's default behaviour from the same pieces.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from ray.rllib.connectors.common import (
    AddObservationsFromEpisodesToBatch,
    AddStatesFromEpisodesToBatch,
    AddTimeDimToBatchAndZeroPad,
    BatchIndividualItems,
)
from ray.rllib.connectors.connector_v2 import ConnectorV2
from ray.rllib.connectors.learner import AddColumnsFromEpisodesToTrainBatch
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.multi_rl_module import MultiRLModule
from ray.rllib.utils.numpy import convert_to_numpy

__all__ = [
    "STATES_KEY",
    "AddSynapticStatesToBatch",
    "BatchSynapticStates",
    "MoveSynapticStateToEpisode",
    "SynapticStates",
    "compact_state_connectors",
    "compact_state_keys",
    "compact_states",
    "install_env_to_module",
    "install_learner",
    "install_module_to_env",
]

STATES_KEY = "stpn_synaptic_states"  # the `custom_data` key of an episode chunk's SynapticStates
# Stands in for a state whose keys are all compact (HebbFF's): RLlib's episode buffers cannot
# hold an empty STATE_OUT dict. Never reaches the module.
PLACEHOLDER = "_stpn_compact"

State = dict[str, np.ndarray]
RowStarts = Callable[[int, int], Iterable[int]]


def compact_state_keys(module: Any) -> tuple[str, ...]:
    """The state keys `module` wants stored compactly (`()` for any other module)."""
    # A learner's module may be wrapped (torch DDP with several learners).
    module = module.unwrapped() if hasattr(module, "unwrapped") else module
    return tuple(getattr(module, "compact_state_keys", ()) or ())


def default_row_starts(length: int, max_seq_len: int) -> range:
    """RLlib's training rows: a new row every `max_seq_len` steps of a chunk."""
    return range(0, length, max_seq_len)


class _Current:
    """The compact state after an episode's latest forward pass, shared by all its chunks.

    `state` maps each compact key to the episode's row of the module's batched output; `batch`
    and `row` say which output and which row (None when the state came one episode at a time),
    so that the next step can hand the module that very output again.
    """

    __slots__ = ("state", "batch", "row")

    def __init__(self) -> None:
        self.state: State | None = None
        self.batch: State | None = None
        self.row = -1


class SynapticStates:
    """What an episode chunk keeps of its compact state keys.

    `lookback` is the state the chunk's first sequence starts from (None at an episode's start)
    and `kept[i]` the STATE_OUT of chunk steps i = m-1, 2m-1, ... (m = `max_seq_len`), from
    which the learner's later sequences start (RLlib's learners append one artificial step to
    each chunk, so the last step's state may be needed too). These arrays are never written to;
    a chunk's last `kept` entry is the very array its continuation uses as `lookback`.
    `current` holds the episode's live state and is shared by all its chunks; `cut_from` is
    the chunk this one continues, until its state is released (see MoveSynapticStateToEpisode);
    `shipped` says the chunk has been pickled, i.e. sent to another process. `last` is the
    chunk index of the latest step; with `ship_last=False` (A2C, whose learner rows never start
    after a chunk's last step) the state kept there stays in the env runner, for the chunk that
    continues the episode, and is not shipped with this one.
    """

    __slots__ = (
        "current",
        "chunk",
        "lookback",
        "kept",
        "cut_from",
        "shipped",
        "released",
        "last",
        "ship_last",
    )

    def __init__(self, current: _Current | None = None, ship_last: bool = True) -> None:
        self.current = current if current is not None else _Current()
        self.chunk: int | None = None  # `t_started` of the chunk the entries below belong to
        self.lookback: State | None = None
        self.kept: dict[int, State] = {}
        self.cut_from: SynapticStates | None = None
        self.shipped = False
        self.released = False
        self.last = -1
        self.ship_last = ship_last

    def __deepcopy__(self, memo: dict) -> SynapticStates:
        # `SingleAgentEpisode.cut()` deep-copies `custom_data` into the continuation: share the
        # episode's live state and the (read-only) arrays instead of copying 680 KB each.
        other = SynapticStates(self.current, self.ship_last)
        other.chunk, other.lookback, other.kept = self.chunk, self.lookback, dict(self.kept)
        other.last, other.cut_from = self.last, self
        return other

    def __getstate__(self) -> dict:
        # Only the env runner stepping the episode needs the live state: a chunk shipped to the
        # learner carries what the learner reads, not 680 KB more at the Pong size.
        self.shipped = True
        kept = self.kept
        if not self.ship_last and self.last in kept:
            kept = {i: v for i, v in kept.items() if i != self.last}
        return {"chunk": self.chunk, "lookback": self.lookback, "kept": kept}

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
        "model_config['compact_states']=False to use RLlib's default path throughout"
    )


def single_module(rl_module: Any, sa_episode: Any) -> Any:
    """The RLModule that acts for `sa_episode` (`rl_module` itself unless it is a MultiRLModule)."""
    if isinstance(rl_module, MultiRLModule):
        return rl_module[sa_episode.module_id or DEFAULT_MODULE_ID]
    return rl_module


def _to_numpy(value: Any) -> np.ndarray:
    """A CPU tensor's memory as numpy, without a copy (RLlib's `convert_to_numpy` copies)."""
    if isinstance(value, np.ndarray):
        return value
    return value.detach().cpu().numpy()


def _modules(rl_module: Any) -> list[Any]:
    return list(rl_module.values()) if isinstance(rl_module, MultiRLModule) else [rl_module]


def _own_copy(row: np.ndarray) -> np.ndarray:
    """A row to keep beyond the next step: copied unless it already owns its memory, so that
    it does not keep the whole batch it came from alive."""
    return row if row.base is None else row.copy()


class MoveSynapticStateToEpisode(ConnectorV2):
    """Module-to-env: takes the compact keys out of STATE_OUT and keeps what is needed.

    Works on torch tensors or numpy arrays, so it can run before or after RLlib's
    TensorToNumpy. RLlib's env runner also keeps every chunk it has returned until the episode
    ends, for its episode metrics. A chunk that has been pickled (a remote env runner's
    `sample()` result, or episodes sent to a remote learner) went out with its states, so when
    its episode's next chunk starts, the states it kept here are dropped: memory then no longer
    grows with the steps of an episode. Chunks handed on by reference keep theirs.
    """

    def __init__(self, *args: Any, ship_last: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ship_last = ship_last

    def __call__(self, *, rl_module, batch, episodes, explore=None, shared_data=None, **kwargs):
        state_out = batch.get(Columns.STATE_OUT)
        stepped = list(self.single_agent_episode_iterator(episodes, agents_that_stepped_only=True))
        if not isinstance(state_out, dict) or not state_out or not stepped:
            return batch
        module = single_module(rl_module, stepped[0])
        keys = compact_state_keys(module)
        if not keys:
            return batch
        # Run first (A2C's pipeline), STATE_OUT is the module's batched output, one row per
        # episode of the env-to-module batch; run as a custom piece (`compact_states`), RLlib
        # has already split it into one item per episode id.
        if isinstance(next(iter(state_out)), tuple):
            rows = []
            for key, items in state_out.items():
                row = {k: _to_numpy(items[0].pop(k)) for k in keys if k in items[0]}
                rows.append((key[0], row, None, -1))
                if not items[0]:
                    items[0][PLACEHOLDER] = np.zeros((), np.float32)
        else:
            # Zero-copy on the CPU; rows of these arrays become the episodes' live states.
            values = {k: _to_numpy(state_out.pop(k)) for k in keys if k in state_out}
            ids = (shared_data or {}).get("memorized_map_structure") or [e.id_ for e in stepped]
            rows = [
                (eid, {k: v[i] for k, v in values.items()}, values, i) for i, eid in enumerate(ids)
            ]
            if not state_out:
                state_out[PLACEHOLDER] = np.zeros(len(ids), np.float32)
        # An episode that ended at the last env step has been replaced by a new one by now:
        # the output computed for its last observation is not needed.
        by_id = {ep.id_: ep for ep in stepped}
        max_seq_len = module.model_config["max_seq_len"]
        for eid, row, values, i in rows:
            ep = by_id.get(eid)
            if ep is not None and row:
                current = self._record(ep, row, max_seq_len)
                current.batch, current.row = values, i
        return batch

    def _record(self, ep: Any, row: State, max_seq_len: int) -> _Current:
        states = ep.custom_data.get(STATES_KEY)
        if states is None:
            states = ep.custom_data[STATES_KEY] = SynapticStates(ship_last=self._ship_last)
        if states.chunk != ep.t_started:
            # The first forward pass of an episode or of a chunk continued after a cut.
            previous = states.current.state  # the previous chunk's last STATE_OUT
            if ep.t_started == 0:
                states.lookback = None
            elif previous is None:
                raise _missing_state(ep)
            elif states.last in states.kept:  # the same values, kept already: share them
                states.lookback = states.kept[states.last]
            else:
                states.lookback = {k: _own_copy(v) for k, v in previous.items()}
            states.chunk = ep.t_started
            states.kept = {}
            returned, states.cut_from = states.cut_from, None
            if returned is not None and returned.shipped:
                returned.lookback, returned.kept, returned.released = None, {}, True
        index = len(ep)  # the chunk index this STATE_OUT will be stored at
        if (index + 1) % max_seq_len == 0:
            # Copied, so that it does not keep the whole batch alive; the live state stays the
            # batch row, which the next step hands to the module as it is.
            states.kept[index] = {k: v.copy() for k, v in row.items()}
        states.current.state = row
        states.last = index
        return states.current


def _start_state(module: Any, ep: Any, keys: tuple[str, ...], states: Any, index: int) -> dict:
    """The full state before chunk step `index`: STATE_OUT of step index-1 plus its compact keys
    (the lookback or the initial state for index 0)."""
    if index == 0 and ep.t_started == 0:
        return convert_to_numpy(module.get_initial_state())
    state = dict(
        ep.get_extra_model_outputs(
            key=Columns.STATE_OUT, indices=index - 1, neg_index_as_lookback=index == 0
        )
    )
    state.pop(PLACEHOLDER, None)
    if keys:
        compact = states.lookback if index == 0 else states.kept.get(index - 1)
        if compact is None:
            raise _missing_state(ep)
        state.update(compact)
    return state


class AddSynapticStatesToBatch(AddStatesFromEpisodesToBatch):
    """RLlib's STATE_IN builder, reading the compact keys from `custom_data`.

    As an env-to-module piece with `batched_later=True`, it leaves the compact keys out and
    `BatchSynapticStates` (after RLlib's BatchIndividualItems) adds them batched, without a
    copy when they are the rows of the previous step's output. As a learner piece,
    `row_starts(length, max_seq_len)` gives the chunk steps its training rows start at (RLlib's
    layout by default; A2C's has no row for the artificial step alone).
    """

    def __init__(
        self,
        *args: Any,
        batched_later: bool = False,
        row_starts: RowStarts = default_row_starts,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._batched_later = batched_later
        self._row_starts = row_starts

    def __call__(self, *, rl_module, batch, episodes, explore=None, shared_data=None, **kwargs):
        if rl_module is None or not rl_module.is_stateful() or Columns.STATE_IN in batch:
            return batch
        if self._as_learner_connector:
            if Columns.NEXT_OBS in batch:  # off-policy algorithms: RLlib's own builder
                if any(compact_state_keys(m) for m in _modules(rl_module)):
                    raise ValueError(
                        "compact state storage does not build NEXT_STATE_IN (off-policy "
                        "algorithms); set model_config['compact_states']=False"
                    )
                return super().__call__(
                    rl_module=rl_module, batch=batch, episodes=episodes, shared_data=shared_data
                )
            self._add_training_states(rl_module, batch, episodes)
        else:
            self._add_next_states(rl_module, batch, episodes)
        return batch

    def _add_next_states(self, rl_module, batch, episodes) -> None:
        for ep in self.single_agent_episode_iterator(episodes, agents_that_stepped_only=True):
            module = single_module(rl_module, ep)
            if not module.is_stateful():
                continue
            keys = compact_state_keys(module)
            if ep.t_started == 0 and len(ep) == 0:
                state = convert_to_numpy(module.get_initial_state())
            else:
                state = dict(ep.get_extra_model_outputs(key=Columns.STATE_OUT, indices=-1))
                state.pop(PLACEHOLDER, None)
                if keys:
                    states = ep.custom_data.get(STATES_KEY)
                    if states is None or states.current.state is None:
                        raise _missing_state(ep)
                    state.update(states.current.state)
            if keys and self._batched_later:
                state = {k: v for k, v in state.items() if k not in keys}
                state = state or {PLACEHOLDER: np.zeros((), np.float32)}
            self.add_batch_item(batch, Columns.STATE_IN, state, single_agent_episode=ep)

    def _add_training_states(self, rl_module, batch, episodes) -> None:
        for ep in self.single_agent_episode_iterator(episodes, agents_that_stepped_only=False):
            module = single_module(rl_module, ep)
            if not module.is_stateful():
                continue
            keys = compact_state_keys(module)
            states = ep.custom_data.get(STATES_KEY)
            if keys and (states is None or states.released):
                raise _missing_state(ep)
            starts = list(self._row_starts(len(ep), module.model_config["max_seq_len"]))
            rows = [_start_state(module, ep, keys, states, s) for s in starts]
            self.add_n_batch_items(
                batch=batch,
                column=Columns.STATE_IN,
                # One row (the common case): a view, not a copy; RLlib batches them next.
                items_to_add={
                    k: rows[0][k][None] if len(rows) == 1 else np.stack([r[k] for r in rows])
                    for k in rows[0]
                },
                num_items=len(rows),
                single_agent_episode=ep,
            )


class BatchSynapticStates(ConnectorV2):
    """Env-to-module, after BatchIndividualItems: the compact keys of STATE_IN, batched.

    When the episodes' live states are the consecutive rows of one array (the previous forward
    pass's output, in the same episode order), that array is used as it is: no per-step copy.
    Otherwise (a new episode among them, a changed order) the rows are stacked.
    """

    def __call__(self, *, rl_module, batch, episodes, explore=None, shared_data=None, **kwargs):
        state_in = batch.get(Columns.STATE_IN)
        if state_in is None and isinstance(batch.get(DEFAULT_MODULE_ID), dict):
            state_in = batch[DEFAULT_MODULE_ID].get(Columns.STATE_IN)  # batched per module
        if not isinstance(state_in, dict):
            return batch
        stepped = list(self.single_agent_episode_iterator(episodes, agents_that_stepped_only=True))
        module = single_module(rl_module, stepped[0]) if stepped else None
        keys = [k for k in compact_state_keys(module) if k not in state_in] if module else []
        if not keys:
            return batch
        currents = []
        for ep in stepped:
            if ep.t_started == 0 and len(ep) == 0:
                currents.append(None)  # a new episode: the initial state
            else:
                currents.append(ep.custom_data[STATES_KEY].current)
        first = currents[0]
        if (
            first is not None
            and first.batch is not None
            and all(
                c is not None and c.batch is first.batch and c.row == i
                for i, c in enumerate(currents)
            )
        ):
            # Row i of the previous output for episode i, for every episode: that output.
            for key in keys:
                if len(first.batch[key]) == len(currents):
                    state_in[key] = first.batch[key]
        if any(k not in state_in for k in keys):
            initial = convert_to_numpy(module.get_initial_state())
            for key in keys:
                state_in[key] = np.stack(
                    [initial[key] if c is None else c.state[key] for c in currents]
                )
        state_in.pop(PLACEHOLDER, None)
        return batch


# --------------------------------------------------------------------------- pipelines


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
    ours = AddSynapticStatesToBatch(as_learner_connector=True, row_starts=row_starts)
    pipeline.insert_after(AddStatesFromEpisodesToBatch, ours)
    pipeline.remove(AddStatesFromEpisodesToBatch)


class _WithCompactStates:
    """A config's custom-connector builder: the user's pieces, then the compact-state ones.

    Custom pieces run before RLlib's defaults, so ours bring along the default pieces that must
    run before them; RLlib's own copies then find their columns filled and do nothing.
    """

    def __init__(self, kind: str, user: Callable | None) -> None:
        self.kind, self.user = kind, user

    def __call__(self, *args: Any, **kwargs: Any) -> list[ConnectorV2]:
        pieces = []
        if self.user is not None:
            built = self.user(*args, **kwargs)
            pieces = list(built) if isinstance(built, list | tuple) else [built]
        if self.kind == "env_to_module":
            ours = [
                AddObservationsFromEpisodesToBatch(),
                AddTimeDimToBatchAndZeroPad(),
                AddSynapticStatesToBatch(),
            ]
        elif self.kind == "module_to_env":
            ours = [MoveSynapticStateToEpisode()]
        else:
            ours = [
                AddObservationsFromEpisodesToBatch(as_learner_connector=True),
                AddColumnsFromEpisodesToTrainBatch(),
                AddTimeDimToBatchAndZeroPad(as_learner_connector=True),
                AddSynapticStatesToBatch(as_learner_connector=True),
            ]
        return pieces + ours


# The AlgorithmConfig attributes that hold the custom-connector builders, by pipeline.
_CONNECTOR_ATTRS = {
    "env_to_module": "_env_to_module_connector",
    "module_to_env": "_module_to_env_connector",
    "learner": "_learner_connector",
}


def compact_state_connectors(current: dict[str, Any] | None = None) -> dict[str, Any]:
    """The config attributes `compact_states` sets (e.g. into a dict for `update_from_dict`).

    `current` maps those attribute names to builders already set; they keep running first.
    """
    current = current or {}
    out = {}
    for kind, attr in _CONNECTOR_ATTRS.items():
        builder = current.get(attr)
        if not isinstance(builder, _WithCompactStates):
            builder = _WithCompactStates(kind, builder)
        out[attr] = builder
    return out


def compact_states(config: Any) -> Any:
    """Store STPN states compactly in `config` (any algorithm; A2C does it by itself).

    Adds the compact-state pieces as the config's custom env-to-module, module-to-env and
    learner connectors (after any you set), so they travel with the config to every env runner
    and learner process, Tune trials included. Modules without large state keys, or with
    `model_config["compact_states"] = False`, are unaffected. Idempotent; returns `config`.

        config = rllib_stpn.compact_states(PPOConfig().environment(...).rl_module(...))
    """
    if _is_a2c(config):
        return config
    if config.is_multi_agent:
        raise ValueError("compact_states supports single-agent configs only")
    builders = compact_state_connectors(
        {attr: getattr(config, attr) for attr in _CONNECTOR_ATTRS.values()}
    )
    config.env_runners(
        env_to_module_connector=builders["_env_to_module_connector"],
        module_to_env_connector=builders["_module_to_env_connector"],
    )
    config.learners(learner_connector=builders["_learner_connector"])
    return config


def _is_a2c(config: Any) -> bool:
    from rllib_stpn.algorithms.a2c import A2CConfig

    return isinstance(config, A2CConfig)
