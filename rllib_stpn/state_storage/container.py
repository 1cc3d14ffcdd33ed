"""What an episode keeps of its compact state keys (`SynapticStates`), and the small helpers
every piece shares: which keys a module stores compactly, where training rows start."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.rl_module.multi_rl_module import MultiRLModule

__all__ = [
    "PLACEHOLDER",
    "STATES_KEY",
    "CurrentState",
    "SynapticStates",
    "compact_state_keys",
    "default_row_starts",
    "missing_state_error",
    "single_module",
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


def single_module(rl_module: Any, sa_episode: Any) -> Any:
    """The RLModule that acts for `sa_episode` (`rl_module` itself unless it is a MultiRLModule)."""
    if isinstance(rl_module, MultiRLModule):
        return rl_module[sa_episode.module_id or DEFAULT_MODULE_ID]
    return rl_module


class CurrentState:
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

    def __init__(self, current: CurrentState | None = None, ship_last: bool = True) -> None:
        self.current = current if current is not None else CurrentState()
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


def missing_state_error(ep: Any) -> RuntimeError:
    states = ep.custom_data.get(STATES_KEY)
    if states is not None and states.released:
        why = "were released after the chunk had been shipped and its episode went on"
    else:
        why = "are missing (was it sampled without rllib_stpn's compact state storage?)"
    return RuntimeError(
        f"the synaptic states of episode {ep.id_} (chunk from t={ep.t_started}) {why}; set "
        "model_config['compact_states']=False to use RLlib's default path throughout"
    )
