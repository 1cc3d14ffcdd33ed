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

One job a module: ``container`` (SynapticStates and shared helpers), ``connectors`` (the
pieces), ``pipelines`` (into RLlib-built pipelines), ``config`` (``compact_states``).
"""

from __future__ import annotations

from rllib_stpn.state_storage.config import (
    builds_own_compact_states,
    compact_state_connectors,
    compact_states,
)
from rllib_stpn.state_storage.connectors import (
    AddSynapticStatesToBatch,
    BatchSynapticStates,
    BatchTrainingSynapticStates,
    MoveSynapticStateToEpisode,
)
from rllib_stpn.state_storage.container import (
    PLACEHOLDER,
    STATES_KEY,
    SynapticStates,
    compact_state_keys,
    default_row_starts,
    single_module,
)
from rllib_stpn.state_storage.pipelines import (
    install_env_to_module,
    install_learner,
    install_module_to_env,
)

__all__ = [
    "PLACEHOLDER",
    "STATES_KEY",
    "AddSynapticStatesToBatch",
    "BatchSynapticStates",
    "BatchTrainingSynapticStates",
    "MoveSynapticStateToEpisode",
    "SynapticStates",
    "builds_own_compact_states",
    "compact_state_connectors",
    "compact_state_keys",
    "compact_states",
    "default_row_starts",
    "install_env_to_module",
    "install_learner",
    "install_module_to_env",
    "single_module",
]
