"""Checks of an experiment before Tune creates a single directory: run, env, config values,
counts, the model (built once per distinct config), checkpoint settings and the storage path."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rllib_stpn.experiments.errors import ExperimentError, check_keys, did_you_mean, one_line
from rllib_stpn.experiments.translate import to_param_space
from rllib_stpn.experiments.yaml_format import Experiment, variants

__all__ = [
    "build_algorithm_config",
    "check_env",
    "check_writable_dir",
    "make_checkpoint_config",
    "resolve_algorithm",
    "storage_path",
    "validate_experiment",
]

# AlgorithmConfig sizes and resource counts: (smallest value, integer only, other values allowed).
_COUNT_SETTINGS = {
    "num_env_runners": (0, True, ()),
    "num_envs_per_env_runner": (1, True, ()),
    "num_learners": (0, True, ()),
    "evaluation_num_env_runners": (0, True, ()),
    "num_cpus_per_env_runner": (0, False, ()),
    "num_gpus_per_env_runner": (0, False, ()),
    "num_cpus_per_learner": (0, False, ("auto",)),
    "num_gpus_per_learner": (0, False, ()),
    "num_cpus_for_main_process": (0, False, ()),
    "rollout_fragment_length": (1, True, ("auto",)),
    "evaluation_interval": (0, True, (None,)),
    "seed": (0, True, (None,)),
    "train_batch_size_per_learner": (1, True, (None,)),
    "minibatch_size": (1, True, (None,)),
    "num_epochs": (1, True, ()),
}


def resolve_algorithm(run: Any) -> type:
    """The Algorithm class registered with Tune under ``run`` (e.g. "PPO", "A2C")."""
    import rllib_stpn

    rllib_stpn.register()  # A2C, the env ids and the "stpn" model

    if isinstance(run, type):
        return run
    from ray.tune.registry import TRAINABLE_CLASS, _global_registry, get_trainable_cls

    if not isinstance(run, str):
        raise ExperimentError(f"'run' must be an algorithm name such as A2C or PPO, got {run!r}")
    if _global_registry.contains(TRAINABLE_CLASS, run):
        return _global_registry.get(TRAINABLE_CLASS, run)
    from ray.rllib.algorithms.registry import ALGORITHMS

    if run not in ALGORITHMS:
        known = set(ALGORITHMS) | {"A2C"}
        raise ExperimentError(f"unknown run {run!r}{did_you_mean(run, known)}")
    try:
        return get_trainable_cls(run)
    except Exception as err:  # an RLlib algorithm whose dependencies are missing
        raise ExperimentError(f"cannot load algorithm {run!r}: {err}") from None


def check_env(env: Any) -> None:
    """Fail unless ``env`` is registered with Tune or gymnasium (or is an env class/creator)."""
    import rllib_stpn

    rllib_stpn.register()
    if not isinstance(env, str):
        if callable(env):
            return
        raise ExperimentError(f"'env' must be an environment id, got {env!r}")
    from ray.tune.registry import ENV_CREATOR, _global_registry

    if _global_registry.contains(ENV_CREATOR, env):
        return
    import gymnasium as gym

    if env.startswith("ALE/"):
        from rllib_stpn._extras import require

        gym.register_envs(require("ale_py", "atari", env))
    try:
        gym.spec(env)  # also imports "module:EnvId" and handles namespaces
        return
    except Exception:
        pass
    registered = [*_global_registry._to_flush, *_global_registry._registered]
    tune_envs = {k for c, k in registered if c == ENV_CREATOR}
    known = set(gym.registry) | tune_envs
    raise ExperimentError(f"unknown env {env!r}{did_you_mean(env, known)}")


def build_algorithm_config(experiment: Experiment, variant: Mapping[str, Any] | None = None):
    """The AlgorithmConfig of one (grid-resolved) variant of ``experiment``, validated."""
    algo_cls = resolve_algorithm(experiment.run)
    if variant is None:
        variant = next(variants(experiment.config))
    param = to_param_space(variant, algo_cls)
    try:
        config = algo_cls.get_default_config().update_from_dict(param)
        _check_counts(config)
        _check_choices(config)
        config.validate()
    except ExperimentError:
        raise
    except Exception as err:
        raise ExperimentError(f"invalid config for {experiment.name!r}: {one_line(err)}") from None
    return config


# AlgorithmConfig settings with a fixed set of values RLlib only checks inside a trial.
_CHOICE_SETTINGS = {
    "grad_clip_by": ("value", "norm", "global_norm"),
    "batch_mode": ("truncate_episodes", "complete_episodes"),
}


def _check_choices(config: Any) -> None:
    for name, allowed in _CHOICE_SETTINGS.items():
        value = getattr(config, name, None)
        if value not in allowed:
            names = ", ".join(allowed)
            raise ValueError(f"`{name}` must be one of {names}, got {value!r}")


def _check_grids(value: Any, path: str) -> None:
    """``{grid_search: [...]}`` needs a non-empty list (Tune fails inside its generator)."""
    if isinstance(value, Mapping):
        if "grid_search" in value:
            grid = value["grid_search"]
            if not isinstance(grid, list) or not grid:
                raise ExperimentError(
                    f"config value {path}: grid_search needs a non-empty list of values, "
                    f"got {grid!r}"
                )
        for key, item in value.items():
            _check_grids(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_grids(item, f"{path}[{i}]")


def _check_counts(config: Any) -> None:
    """Sizes and resource counts RLlib's own ``validate()`` lets through (0 envs, -1 runners).

    Such a trial would fail with a long traceback or wait forever for resources.
    """
    for name, (minimum, integer, allowed) in _COUNT_SETTINGS.items():
        value = getattr(config, name, None)
        if value is None and None in allowed or isinstance(value, str) and value in allowed:
            continue
        kind = int if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kind) or value < minimum:
            also = "".join(f" or {a!r}" for a in allowed if a is not None)
            also += " or None" if None in allowed else ""
            what = "an integer" if integer else "a number"
            raise ValueError(f"`{name}` must be {what} >= {minimum}{also}, got {value!r}")


def _check_finite(value: Any, path: str) -> None:
    """NaN or infinity anywhere in a config (grid values included) is an error, not a run."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ExperimentError(f"config value {path} is {value}; it must be a finite number")
    if isinstance(value, Mapping):
        for key, item in value.items():
            _check_finite(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_finite(item, f"{path}[{i}]")


def validate_experiment(experiment: Experiment, *, build_module: bool = True) -> None:
    """Check everything Tune would only find out in a trial: run, env, keys, values, model.

    With ``build_module`` the env is created once per distinct ``env_config`` and the RLModule
    is built for its spaces once per distinct model config, which catches bad model settings
    and bad env options in any grid point.
    """
    algo_cls = resolve_algorithm(experiment.run)
    if isinstance(experiment.num_samples, bool) or not isinstance(experiment.num_samples, int):
        raise ExperimentError(
            f"num_samples must be a positive integer, got {experiment.num_samples!r}"
        )
    if experiment.num_samples < 1:
        raise ExperimentError(
            f"num_samples must be a positive integer, got {experiment.num_samples}"
        )
    make_checkpoint_config(experiment.checkpoint_config)
    storage_path(experiment)
    _check_finite(experiment.config, "")
    _check_grids(experiment.config, "")
    to_param_space(experiment.config, algo_cls)  # key errors before anything else
    spaces_by_env: dict[str, Any] = {}
    built: set[str] = set()
    for variant in variants(experiment.config):
        check_env(variant.get("env"))
        config = build_algorithm_config(experiment, variant)
        if not (build_module and config.enable_rl_module_and_learner):
            continue
        env_key = _json_key([variant.get("env"), variant.get("env_config")])
        module_key = _json_key([env_key, config.model_config, config._rl_module_spec])
        if module_key in built:
            continue
        if env_key not in spaces_by_env:
            spaces_by_env[env_key] = _env_spaces(config)
        _build_module(config, spaces_by_env[env_key], experiment.name)
        built.add(module_key)


def _json_key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=repr)


def _env_spaces(config: Any) -> dict[str, tuple[Any, Any]]:
    """``{module id: (observation space, action space)}`` of one env made from ``config``."""
    from ray.rllib.core import DEFAULT_MODULE_ID

    try:
        env = _make_env(config.env, dict(config.env_config or {}))
    except ExperimentError:
        raise
    except Exception as err:
        raise ExperimentError(f"env {config.env!r} cannot be created: {one_line(err)}") from None
    try:
        return {
            DEFAULT_MODULE_ID: (
                getattr(env, "single_observation_space", env.observation_space),
                getattr(env, "single_action_space", env.action_space),
            )
        }
    finally:
        env.close()


def _build_module(config: Any, spaces: dict[str, tuple[Any, Any]], name: str) -> None:
    try:
        config.get_rl_module_spec(spaces=spaces).build()
    except Exception as err:
        raise ExperimentError(f"model of {name!r} cannot be built: {one_line(err)}") from None


def _make_env(env: Any, env_config: dict[str, Any]) -> Any:
    from ray.rllib.env.env_context import EnvContext
    from ray.tune.registry import ENV_CREATOR, _global_registry

    if not isinstance(env, str):
        return env(EnvContext(env_config, worker_index=0))
    if _global_registry.contains(ENV_CREATOR, env):
        creator = _global_registry.get(ENV_CREATOR, env)
        return creator(EnvContext(env_config, worker_index=0))
    import gymnasium as gym

    return gym.make(env, **env_config)


def make_checkpoint_config(spec: Mapping[str, Any], frequency: int | None = None) -> Any:
    from ray.tune import CheckpointConfig

    fields = {f.name for f in dataclasses.fields(CheckpointConfig) if not f.name.startswith("_")}
    check_keys(spec, fields, "checkpoint_config")
    kwargs = {"checkpoint_at_end": True, **spec}
    if frequency is not None:
        kwargs["checkpoint_frequency"] = frequency
    try:
        return CheckpointConfig(**kwargs)
    except Exception as err:
        raise ExperimentError(f"invalid checkpoint_config: {one_line(err)}") from None


def storage_path(experiment: Experiment) -> str:
    """Where Tune writes ``experiment``: a remote URI as given, a local path made absolute.

    A local path (or the first of its parents that exists) must be a writable directory.
    """
    storage = experiment.storage_path or "~/ray_results"
    if not isinstance(storage, str):
        raise ExperimentError(f"storage_path must be a path or URI, got {storage!r}")
    if "://" in storage:  # s3://, gs://, ...: Tune and pyarrow resolve it
        return storage
    storage = os.path.abspath(os.path.expanduser(storage))  # Tune and pyarrow want it absolute
    check_writable_dir(storage, "storage path")
    return storage


# Kernel pseudo filesystems: results never belong there, and as root a mkdir may even work
# (under /sys/fs/cgroup it makes a cgroup).
_PSEUDO_FS_ROOTS = (Path("/proc"), Path("/sys"), Path("/dev"))


def check_writable_dir(path: str | os.PathLike, what: str) -> None:
    """Fail unless ``path`` is a writable directory or can be created as one.

    Checked by creating (and removing) a file in the nearest existing directory: ``os.access``
    answers yes to root even on a read-only or pseudo filesystem.
    """
    path = Path(os.path.abspath(path))
    shm = Path("/dev/shm")  # a tmpfs, a fine place for results
    pseudo = [root for root in _PSEUDO_FS_ROOTS if path == root or root in path.parents]
    if pseudo and not (path == shm or shm in path.parents):
        raise ExperimentError(f"{what} {path} is on a kernel pseudo filesystem; choose another")
    if path.exists() and not path.is_dir():
        raise ExperimentError(f"{what} {path} is not a directory")
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise ExperimentError(f"{what} {path} cannot be created: {existing} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".rllib-write-test-", dir=existing)
    except OSError as err:
        raise ExperimentError(
            f"{what} {path} cannot be written: {err.strerror or err} in {existing}"
        ) from None
    os.close(fd)
    os.unlink(probe)
