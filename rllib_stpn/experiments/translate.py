"""A classic config dict (old ``model: {...}`` included) -> the partial AlgorithmConfig dict
Tune receives; unknown keys are rejected here."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from typing import Any

from rllib_stpn.experiments.errors import ExperimentError, check_keys, did_you_mean
from rllib_stpn.experiments.yaml_format import is_grid

__all__ = ["to_param_space"]

# Keys `AlgorithmConfig.update_from_dict` understands that are not plain attributes.
_SPECIAL_CONFIG_KEYS = {"multiagent", "_enable_new_api_stack", "env", "lr_schedule"}


def _api_stack(config: Mapping[str, Any], algo_cls: type) -> bool:
    """True when the config runs on the new API stack (RLModule + Learner)."""
    for key in (
        "enable_rl_module_and_learner",
        "enable_env_runner_and_connector_v2",
        "_enable_new_api_stack",
    ):
        if key in config and not is_grid(config[key]):
            return bool(config[key])
    return bool(algo_cls.get_default_config().enable_rl_module_and_learner)


def to_param_space(config: Mapping[str, Any], algo_cls: type) -> dict[str, Any]:
    """Classic config dict -> partial AlgorithmConfig dict (grid searches left in place).

    This is what Tune receives: RLlib's ``Algorithm`` applies it with ``update_from_dict``. The
    ``model`` dict becomes the new stack's RLModule settings (``custom_model: stpn`` ->
    ``RLModuleSpec(STPNModel)`` with ``custom_model_config`` as its ``model_config`` and the
    synaptic-power callback), or stays as it is on the old stack.
    """
    config = copy.deepcopy(dict(config))
    default = algo_cls.get_default_config()
    new_stack = _api_stack(config, algo_cls)

    unknown = []
    for key in config:
        attr = type(default)._translate_special_keys(key, warn_deprecated=False)
        if key in _SPECIAL_CONFIG_KEYS or hasattr(default, attr):
            continue
        unknown.append(key)
    if unknown:
        key = sorted(unknown)[0]
        names = [n for n in vars(default) if not n.startswith("_")] + ["lambda", "lr_schedule"]
        raise ExperimentError(
            f"unknown config key {key!r} for {algo_cls.__name__}{did_you_mean(key, names)}"
        )

    if "lr_schedule" in config:
        schedule = config.pop("lr_schedule")
        if new_stack and schedule is not None:
            config["lr"] = schedule  # the new stack reads schedules from `lr` itself
        elif schedule is not None:
            config["lr_schedule"] = schedule

    power_callback = False
    model = config.pop("model", None)
    if model is not None:
        if not isinstance(model, Mapping) or is_grid(model):
            raise ExperimentError(
                "'model' must be a mapping (grid-search its keys, not the whole dict)"
            )
        model = dict(model)
        custom = model.get("custom_model")
        if not new_stack:
            if custom is not None and isinstance(custom, str):
                _check_old_stack_model(custom, model)
            # SynapticPowerCallback reads new-stack episodes; old-stack runs keep their model.
            config["model"] = model
        elif custom is None:
            check_keys(model, _default_model_keys(), "model")
            config["_model_config"] = model
        elif custom == "stpn":
            extra = set(model) - {"custom_model", "custom_model_config", "max_seq_len"}
            if extra:
                key = sorted(extra)[0]
                raise ExperimentError(
                    f"model key {key!r} is not used by custom_model stpn; put STPN settings in "
                    f"model.custom_model_config (keys: {', '.join(sorted(_stpn_keys()))})"
                )
            model_config = dict(model.get("custom_model_config") or {})
            check_keys(model_config, _stpn_keys(), "model.custom_model_config")
            if "max_seq_len" in model:
                model_config.setdefault("max_seq_len", model["max_seq_len"])
            from ray.rllib.core.rl_module.rl_module import RLModuleSpec

            config["_rl_module_spec"] = RLModuleSpec(module_class=_stpn_model_class())
            config["_model_config"] = model_config
            power_callback = True
            from rllib_stpn.state_storage import builds_own_compact_states, compact_state_connectors

            if not builds_own_compact_states(default):
                # STPN states stored once per training sequence (A2C does so by itself).
                config.update(compact_state_connectors(config))
        else:
            raise ExperimentError(
                f"custom_model {custom!r} is not available on the new API stack (only 'stpn'); "
                "set enable_rl_module_and_learner: false for ModelV2 models"
            )

    if power_callback:
        callback = _power_callback_class()
        if callback is not None:
            user = config.get("callbacks")
            if user is None:
                config["callbacks"] = callback
            elif isinstance(user, list | tuple):
                config["callbacks"] = [*user, callback]
            else:
                config["callbacks"] = [user, callback]
    return config


def _default_model_keys() -> set[str]:
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    return {f.name for f in dataclasses.fields(DefaultModelConfig)}


def _stpn_model_class() -> type:
    try:
        from rllib_stpn.rl_module import STPNModel
    except ImportError as err:
        raise ExperimentError(f"custom_model stpn needs rllib_stpn.STPNModel: {err}") from None
    return STPNModel


def _stpn_keys() -> set[str]:
    """The ``model_config`` keys STPNModel (and STPNModelV2) accept."""
    from rllib_stpn.model_config import DEFAULT_MODEL_CONFIG

    return set(DEFAULT_MODEL_CONFIG)


def _power_callback_class() -> type | None:
    try:
        from rllib_stpn.callbacks import SynapticPowerCallback
    except ImportError:
        return None
    return SynapticPowerCallback


def _check_old_stack_model(custom: str, model: Mapping[str, Any]) -> None:
    from ray.rllib.models import MODEL_DEFAULTS
    from ray.tune.registry import RLLIB_MODEL, _global_registry

    if "." not in custom and not _global_registry.contains(RLLIB_MODEL, custom):
        raise ExperimentError(f"unknown custom_model {custom!r} (register it with ModelCatalog)")
    check_keys(model, set(MODEL_DEFAULTS), "model")
    if custom == "stpn":
        check_keys(model.get("custom_model_config") or {}, _stpn_keys(), "custom_model_config")
