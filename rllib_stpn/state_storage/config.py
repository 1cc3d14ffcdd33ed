"""`compact_states(config)`: the pieces as an AlgorithmConfig's custom connectors, for any
algorithm (they travel with the config to every env runner and learner process)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ray.rllib.connectors.common import (
    AddObservationsFromEpisodesToBatch,
    AddTimeDimToBatchAndZeroPad,
)
from ray.rllib.connectors.connector_v2 import ConnectorV2
from ray.rllib.connectors.learner import AddColumnsFromEpisodesToTrainBatch

from rllib_stpn.state_storage.connectors import (
    AddSynapticStatesToBatch,
    MoveSynapticStateToEpisode,
)

__all__ = ["builds_own_compact_states", "compact_state_connectors", "compact_states"]


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

    Without this call a config other than A2C's runs RLlib's default path (F stored at every
    step) although `model_config["compact_states"]` defaults to True: that key only chooses
    between the two paths where these pieces are installed. `rllib train file` does the same
    for every new-stack `custom_model: stpn` experiment.

        config = rllib_stpn.compact_states(PPOConfig().environment(...).rl_module(...))
    """
    if builds_own_compact_states(config):
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


def builds_own_compact_states(config: Any) -> bool:
    """True for a config (or Algorithm class' default config) whose own pipeline builders
    install the compact-state pieces, as `A2CConfig` declares with `compact_states_built_in`.

    An attribute rather than an isinstance check, so that this package needs no algorithm.
    """
    return bool(getattr(config, "compact_states_built_in", False))
