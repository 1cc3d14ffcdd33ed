"""The connector pieces: STATE_OUT's compact keys into the episode (module-to-env), and STATE_IN
rebuilt from it (env-to-module and learner), exactly as RLlib's default path builds it."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
from ray.rllib.connectors.common import AddStatesFromEpisodesToBatch
from ray.rllib.connectors.connector_v2 import ConnectorV2
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.multi_rl_module import MultiRLModule
from ray.rllib.utils.numpy import convert_to_numpy

from rllib_stpn.state_storage.container import (
    PLACEHOLDER,
    STATES_KEY,
    CurrentState,
    RowStarts,
    State,
    SynapticStates,
    compact_state_keys,
    default_row_starts,
    missing_state_error,
    single_module,
)

__all__ = [
    "AddSynapticStatesToBatch",
    "BatchSynapticStates",
    "BatchTrainingSynapticStates",
    "MoveSynapticStateToEpisode",
]

# shared_data key: the compact rows of a learner batch, in row order, for
# BatchTrainingSynapticStates.
_TRAINING_ROWS = "_stpn_training_rows"


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

    def _record(self, ep: Any, row: State, max_seq_len: int) -> CurrentState:
        states = ep.custom_data.get(STATES_KEY)
        if states is None:
            states = ep.custom_data[STATES_KEY] = SynapticStates(ship_last=self._ship_last)
        if states.chunk != ep.t_started:
            # The first forward pass of an episode or of a chunk continued after a cut.
            previous = states.current.state  # the previous chunk's last STATE_OUT
            if ep.t_started == 0:
                states.lookback = None
            elif previous is None:
                raise missing_state_error(ep)
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
            raise missing_state_error(ep)
        state.update(compact)
    return state


class AddSynapticStatesToBatch(AddStatesFromEpisodesToBatch):
    """RLlib's STATE_IN builder, reading the compact keys from `custom_data`.

    With `batched_later=True` it leaves the compact keys out, and a piece after RLlib's
    BatchIndividualItems adds them batched: `BatchSynapticStates` (env-to-module; without a copy
    when they are the rows of the previous step's output) or `BatchTrainingSynapticStates`
    (learner; one copy into a reused buffer instead of RLlib's per-row items concatenated into
    fresh memory, which at the Pong size with 64 envs cost most of the learner connector). As a
    learner piece, `row_starts(length, max_seq_len)` gives the chunk steps its training rows
    start at (RLlib's layout by default; A2C's has no row for the artificial step alone).
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
            self._add_training_states(rl_module, batch, episodes, shared_data)
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
                        raise missing_state_error(ep)
                    state.update(states.current.state)
            if keys and self._batched_later:
                state = {k: v for k, v in state.items() if k not in keys}
                state = state or {PLACEHOLDER: np.zeros((), np.float32)}
            self.add_batch_item(batch, Columns.STATE_IN, state, single_agent_episode=ep)

    def _add_training_states(self, rl_module, batch, episodes, shared_data) -> None:
        if self._batched_later and shared_data is None:  # a pipeline always passes a dict
            raise ValueError("AddSynapticStatesToBatch(batched_later=True) needs shared_data")
        for ep in self.single_agent_episode_iterator(episodes, agents_that_stepped_only=False):
            module = single_module(rl_module, ep)
            if not module.is_stateful():
                continue
            keys = compact_state_keys(module)
            states = ep.custom_data.get(STATES_KEY)
            if keys and (states is None or states.released):
                raise missing_state_error(ep)
            starts = list(self._row_starts(len(ep), module.model_config["max_seq_len"]))
            rows = [_start_state(module, ep, keys, states, s) for s in starts]
            if keys and self._batched_later:
                later = shared_data.setdefault(_TRAINING_ROWS, {})
                later.setdefault(ep.module_id or DEFAULT_MODULE_ID, []).extend(
                    {k: r.pop(k) for k in keys} for r in rows
                )
                rows = [r or {PLACEHOLDER: np.zeros((), np.float32)} for r in rows]
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


class BatchTrainingSynapticStates(ConnectorV2):
    """Learner, after BatchIndividualItems: the compact keys of STATE_IN, one row per training
    row, written into a buffer reused from call to call.

    A fresh array of this size (43 MB for Pong's F with 64 envs) is faulted in page by page on
    every update; the buffer is handed out again only once nothing refers to it (no tensor or
    view of it is alive), so a batch someone still holds is never overwritten, and a batch with
    fewer rows gets its first rows.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The last two buffers made: the learner may still hold the previous batch while the
        # next one is built, so two alternate in a steady run.
        self._buffers: list[np.ndarray] = []

    def _rows(self, n: int, row_shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """n rows of a free buffer with room for them (a new one if none: the older of the two
        kept is then dropped, and whoever still holds it keeps it alive)."""
        for i in range(len(self._buffers)):  # not enumerate: its cached tuple holds a reference
            buf = self._buffers[i]
            fits = len(buf) >= n and buf.shape[1:] == row_shape and buf.dtype == dtype
            # References when free: the list's, `buf` and getrefcount's argument.
            if fits and sys.getrefcount(buf) <= 3:
                return buf[:n]
        buf = np.empty((n, *row_shape), dtype)
        self._buffers = [*self._buffers[-1:], buf]
        return buf[:n]

    def __call__(self, *, rl_module, batch, episodes, explore=None, shared_data=None, **kwargs):
        rows_per_module = (shared_data or {}).pop(_TRAINING_ROWS, None)
        if not rows_per_module:
            return batch
        for module_id, rows in rows_per_module.items():
            # Single-agent batches hold the columns at the top, multi-agent ones per module.
            if Columns.STATE_IN in batch:
                state_in = batch[Columns.STATE_IN]
            else:
                state_in = batch[module_id][Columns.STATE_IN]
            for key in rows[0]:
                first = np.asarray(rows[0][key])
                out = self._rows(len(rows), first.shape, first.dtype)
                for i, row in enumerate(rows):
                    out[i] = row[key]
                state_in[key] = out
            state_in.pop(PLACEHOLDER, None)
        return batch
