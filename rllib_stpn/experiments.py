"""RLlib's classic tuned-example YAML format, translated to AlgorithmConfig and run through Tune.

A file maps experiment names to ``{run, env, stop, config, checkpoint_config, num_samples, ...}``
exactly as Ray's old ``rllib train file`` read them. ``config`` holds AlgorithmConfig keys (``lr``,
``gamma``, ``num_env_runners``, ``model: {...}``); Tune search spaces are written as
``{grid_search: [...]}``. ``model: {custom_model: stpn, custom_model_config: {...}}`` selects
:class:`rllib_stpn.STPNModel` on the new API stack (and ``STPNModelV2`` on the old one).

Everything a user can get wrong is checked here, before Tune creates a single directory, and is
reported as one :class:`ExperimentError` line.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from rllib_stpn.metrics import ENV_RUNNERS, POWER_KEY, RETURN_KEY, STEPS_KEY

__all__ = [
    "Experiment",
    "ExperimentError",
    "METRIC_COLUMNS",
    "build_algorithm_config",
    "check_env",
    "check_resources",
    "check_stop_keys",
    "check_writable_dir",
    "flatten_result",
    "load_experiments",
    "make_progress_reporter",
    "parse_experiments",
    "probe_result",
    "resolve_algorithm",
    "run_experiment",
    "storage_path",
    "to_param_space",
    "trial_resources",
    "validate_experiment",
]

# Result keys shown by the progress display (rllib_stpn.metrics; `rllib plot` reads them too).
METRIC_COLUMNS = {
    "training_iteration": "iter",
    STEPS_KEY: "env steps",
    RETURN_KEY: "return",
    POWER_KEY: "power",
    "time_total_s": "time (s)",
}

# Keys of one experiment in the classic format (Ray's old `tune.run_experiments` spec).
_EXPERIMENT_KEYS = {
    "run",
    "env",
    "stop",
    "config",
    "checkpoint_config",
    "checkpoint_freq",
    "checkpoint_at_end",
    "keep_checkpoints_num",
    "num_samples",
    "storage_path",
    "local_dir",
}
# Old-stack metric names still found in tuned examples, mapped to their new-stack result keys.
_LEGACY_STOP_KEYS = {
    "episode_reward_mean": RETURN_KEY,
    "episode_return_mean": RETURN_KEY,
    "timesteps_total": STEPS_KEY,
    f"{ENV_RUNNERS}/{STEPS_KEY}": STEPS_KEY,
}
# Keys `AlgorithmConfig.update_from_dict` understands that are not plain attributes.
_SPECIAL_CONFIG_KEYS = {"multiagent", "_enable_new_api_stack", "env", "lr_schedule"}
_MAX_VALIDATED_VARIANTS = 64
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
    "train_batch_size_per_learner": (1, True, (None,)),
    "minibatch_size": (1, True, (None,)),
    "num_epochs": (1, True, ()),
}


class ExperimentError(ValueError):
    """A problem in an experiment file or option, described in one line."""


@dataclasses.dataclass
class Experiment:
    """One experiment of a tuned-example file, after command-line overrides."""

    name: str
    run: str
    config: dict[str, Any]
    stop: dict[str, Any] = dataclasses.field(default_factory=dict)
    checkpoint_config: dict[str, Any] = dataclasses.field(default_factory=dict)
    num_samples: int = 1
    storage_path: str | None = None

    @property
    def env(self) -> Any:
        return self.config.get("env")


def _close(word: str, candidates: Any) -> str:
    """' (did you mean: a, b?)' for the nearest candidates, or ''."""
    matches = difflib.get_close_matches(str(word), sorted(set(map(str, candidates))), n=3)
    return f" (did you mean: {', '.join(matches)}?)" if matches else ""


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` merged into a copy of ``base``; nested dicts merge key by key."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) and not _is_grid(value):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _is_grid(value: Any) -> bool:
    return isinstance(value, Mapping) and set(value) == {"grid_search"}


# --------------------------------------------------------------------------- loading


def load_experiments(
    path: str | os.PathLike,
    *,
    config_override: Mapping[str, Any] | None = None,
    stop: Mapping[str, Any] | None = None,
    num_samples: int | None = None,
    storage_path: str | None = None,
) -> list[Experiment]:
    """Read a tuned-example YAML file; command-line overrides are applied to every experiment."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ExperimentError(f"experiment file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ExperimentError(f"invalid YAML in {path}{where}: {problem}") from None
    except UnicodeDecodeError:
        raise ExperimentError(f"{path} is not a text (YAML) file") from None
    return parse_experiments(
        data,
        source=str(path),
        config_override=config_override,
        stop=stop,
        num_samples=num_samples,
        storage_path=storage_path,
    )


def parse_experiments(
    data: Any,
    *,
    source: str = "<dict>",
    config_override: Mapping[str, Any] | None = None,
    stop: Mapping[str, Any] | None = None,
    num_samples: int | None = None,
    storage_path: str | None = None,
) -> list[Experiment]:
    """Experiments from an already parsed ``{name: {run, env, stop, config, ...}}`` mapping."""
    if not isinstance(data, dict) or not data:
        raise ExperimentError(
            f"{source} must map experiment names to {{run, env, stop, config}}, got "
            f"{type(data).__name__ if data is not None else 'an empty file'}"
        )
    experiments = []
    for name, spec in data.items():
        if not isinstance(spec, dict):
            raise ExperimentError(f"experiment {name!r} in {source} must be a mapping")
        unknown = set(spec) - _EXPERIMENT_KEYS
        if unknown:
            key = sorted(unknown)[0]
            raise ExperimentError(
                f"unknown key {key!r} in experiment {name!r}{_close(key, _EXPERIMENT_KEYS)}; "
                f"allowed: {', '.join(sorted(_EXPERIMENT_KEYS))}"
            )
        if "run" not in spec:
            raise ExperimentError(f"experiment {name!r} in {source} has no 'run' (e.g. run: A2C)")
        config = spec.get("config") or {}
        if not isinstance(config, dict):
            raise ExperimentError(f"'config' of experiment {name!r} must be a mapping")
        config = copy.deepcopy(config)
        if "env" in spec:
            config["env"] = spec["env"]
        if config_override:
            config = deep_merge(config, config_override)
        if "env" not in config:
            raise ExperimentError(f"experiment {name!r} in {source} names no 'env'")

        exp_stop = dict(stop) if stop is not None else dict(spec.get("stop") or {})
        ckpt = dict(spec.get("checkpoint_config") or {})
        if "checkpoint_freq" in spec:
            ckpt.setdefault("checkpoint_frequency", spec["checkpoint_freq"])
        if "checkpoint_at_end" in spec:
            ckpt.setdefault("checkpoint_at_end", spec["checkpoint_at_end"])
        if "keep_checkpoints_num" in spec:
            ckpt.setdefault("num_to_keep", spec["keep_checkpoints_num"])
        samples = num_samples if num_samples is not None else spec.get("num_samples", 1)
        path = storage_path or spec.get("storage_path") or spec.get("local_dir")
        experiments.append(
            Experiment(
                name=str(name),
                run=spec["run"],
                config=config,
                stop=_translate_stop(exp_stop, name),
                checkpoint_config=ckpt,
                num_samples=samples,
                storage_path=path,
            )
        )
    return experiments


def _translate_stop(stop: Mapping[str, Any], name: Any) -> dict[str, Any]:
    if not isinstance(stop, Mapping):
        raise ExperimentError(f"'stop' of experiment {name!r} must be a mapping of metric: value")
    out = {}
    for key, value in stop.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ExperimentError(f"stop criterion {key!r} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ExperimentError(f"stop criterion {key!r} must be a finite number, got {value}")
        out[_LEGACY_STOP_KEYS.get(key, key)] = value
    return out


# --------------------------------------------------------------------------- checks


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
        raise ExperimentError(f"unknown run {run!r}{_close(run, known)}")
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
    raise ExperimentError(f"unknown env {env!r}{_close(env, known)}")


def _api_stack(config: Mapping[str, Any], algo_cls: type) -> bool:
    """True when the config runs on the new API stack (RLModule + Learner)."""
    for key in (
        "enable_rl_module_and_learner",
        "enable_env_runner_and_connector_v2",
        "_enable_new_api_stack",
    ):
        if key in config and not _is_grid(config[key]):
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
            f"unknown config key {key!r} for {algo_cls.__name__}{_close(key, names)}"
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
        if not isinstance(model, Mapping) or _is_grid(model):
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
            _check_keys(model, _default_model_keys(), "model")
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
            _check_keys(model_config, _stpn_keys(), "model.custom_model_config")
            if "max_seq_len" in model:
                model_config.setdefault("max_seq_len", model["max_seq_len"])
            from ray.rllib.core.rl_module.rl_module import RLModuleSpec

            config["_rl_module_spec"] = RLModuleSpec(module_class=_stpn_model_class())
            config["_model_config"] = model_config
            power_callback = True
            if not _builds_own_compact_states(algo_cls):
                # STPN states stored once per training sequence (A2C does so by itself).
                from rllib_stpn.state_storage import compact_state_connectors

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


def _builds_own_compact_states(algo_cls: type) -> bool:
    from rllib_stpn.algorithms.a2c import A2C

    return issubclass(algo_cls, A2C)


def _check_keys(given: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = set(given) - allowed
    if unknown:
        key = sorted(unknown)[0]
        names = ", ".join(sorted(allowed))
        raise ExperimentError(
            f"unknown {where} key {key!r}{_close(key, allowed)}; allowed: {names}"
        )


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
    _check_keys(model, set(MODEL_DEFAULTS), "model")
    if custom == "stpn":
        _check_keys(model.get("custom_model_config") or {}, _stpn_keys(), "custom_model_config")


def _variants(config: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every grid-search variant of ``config`` (at most _MAX_VALIDATED_VARIANTS of them)."""
    from ray.tune.search.variant_generator import generate_variants

    for i, (_, resolved) in enumerate(generate_variants(copy.deepcopy(dict(config)))):
        if i >= _MAX_VALIDATED_VARIANTS:
            return
        yield resolved


def _grid_keys(config: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Flattened paths ("a/b") of the grid-searched values, for the progress table."""
    keys = []
    for key, value in config.items():
        if _is_grid(value):
            keys.append(prefix + str(key))
        elif isinstance(value, Mapping):
            keys.extend(_grid_keys(value, f"{prefix}{key}/"))
    return keys


def build_algorithm_config(experiment: Experiment, variant: Mapping[str, Any] | None = None):
    """The AlgorithmConfig of one (grid-resolved) variant of ``experiment``, validated."""
    algo_cls = resolve_algorithm(experiment.run)
    if variant is None:
        variant = next(_variants(experiment.config))
    param = to_param_space(variant, algo_cls)
    try:
        config = algo_cls.get_default_config().update_from_dict(param)
        _check_counts(config)
        config.validate()
    except ExperimentError:
        raise
    except Exception as err:
        raise ExperimentError(f"invalid config for {experiment.name!r}: {_one_line(err)}") from None
    return config


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


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    text = text.replace("Try `config.validate()` to get a more detailed error message. ", "")
    return f"{type(err).__name__}: {text}" if not isinstance(err, ValueError) else text


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
    _checkpoint_config(experiment.checkpoint_config)
    storage_path(experiment)
    _check_finite(experiment.config, "")
    to_param_space(experiment.config, algo_cls)  # key errors before anything else
    spaces_by_env: dict[str, Any] = {}
    built: set[str] = set()
    for variant in _variants(experiment.config):
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
        raise ExperimentError(f"env {config.env!r} cannot be created: {_one_line(err)}") from None
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
        raise ExperimentError(f"model of {name!r} cannot be built: {_one_line(err)}") from None


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


def _checkpoint_config(spec: Mapping[str, Any], frequency: int | None = None) -> Any:
    from ray.tune import CheckpointConfig

    fields = {f.name for f in dataclasses.fields(CheckpointConfig) if not f.name.startswith("_")}
    _check_keys(spec, fields, "checkpoint_config")
    kwargs = {"checkpoint_at_end": True, **spec}
    if frequency is not None:
        kwargs["checkpoint_frequency"] = frequency
    try:
        return CheckpointConfig(**kwargs)
    except Exception as err:
        raise ExperimentError(f"invalid checkpoint_config: {_one_line(err)}") from None


# --------------------------------------------------------------------------- running


def make_progress_reporter(experiment: Experiment, max_report_frequency: int = 10) -> Any:
    """Tune's table reporter showing return, power and env steps (plus the grid-searched keys)."""
    from ray.tune import CLIReporter

    params = _grid_keys(to_param_space(experiment.config, resolve_algorithm(experiment.run)))
    return CLIReporter(
        metric_columns=METRIC_COLUMNS,
        parameter_columns={k: k.split("/")[-1] for k in params} or None,
        max_report_frequency=max_report_frequency,
        print_intermediate_tables=True,
    )


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


def check_writable_dir(path: str | os.PathLike, what: str) -> None:
    """Fail unless ``path`` is a writable directory or can be created as one."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ExperimentError(f"{what} {path} is not a directory")
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise ExperimentError(f"{what} {path} cannot be created: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ExperimentError(f"{what} {path} cannot be written: no permission in {existing}")


def trial_resources(experiment: Experiment) -> dict[str, float]:
    """The resources (``{"CPU": n, "GPU": m}``) one trial needs, the largest over grid points.

    This is the Algorithm's own resource request: its main process, env runners, learners and
    evaluation env runners.
    """
    algo_cls = resolve_algorithm(experiment.run)
    needed: dict[str, float] = {}
    for variant in _variants(experiment.config):
        config = build_algorithm_config(experiment, variant)
        request = algo_cls.default_resource_request(config)
        for name, amount in getattr(request, "required_resources", {}).items():
            needed[name] = max(needed.get(name, 0.0), float(amount))
    return needed


def check_resources(experiment: Experiment, available: Mapping[str, float], where: str) -> None:
    """Fail if one trial needs more CPUs or GPUs than ``available`` (it would wait forever)."""
    for name, amount in sorted(trial_resources(experiment).items()):
        if name in ("CPU", "GPU") and amount > available.get(name, 0.0):
            raise ExperimentError(
                f"one trial of {experiment.name!r} needs {amount:g} {name}s (main process, env "
                f"runners, learners), but {where} {available.get(name, 0.0):g}"
            )


# The numeric keys of Tune's AUTO_RESULT_KEYS that every Trainable result has, whatever the
# algorithm (timesteps_total and episodes_total only come with old-style results).
_TUNE_RESULT_KEYS = {
    "training_iteration",
    "time_total_s",
    "time_this_iter_s",
    "time_since_restore",
    "iterations_since_restore",
    "timestamp",
}


def _episode_result_keys(config: Any) -> set[str]:
    """New-stack keys that appear once the first episode has ended (maybe after iteration 1)."""
    from ray.rllib.utils import metrics as m

    names = (
        m.EPISODE_RETURN_MEAN,
        m.EPISODE_RETURN_MAX,
        m.EPISODE_RETURN_MIN,
        m.EPISODE_LEN_MEAN,
        m.EPISODE_LEN_MAX,
        m.EPISODE_LEN_MIN,
        m.EPISODE_DURATION_SEC_MEAN,
        m.NUM_EPISODES,
        m.NUM_EPISODES_LIFETIME,
    )
    groups = [m.ENV_RUNNER_RESULTS]
    if config.evaluation_interval:
        groups.append(f"{m.EVALUATION_RESULTS}/{m.ENV_RUNNER_RESULTS}")
    return {f"{group}/{name}" for group in groups for name in names}


def check_stop_keys(experiment: Experiment) -> None:
    """Fail on a stop criterion no result of the algorithm has (Tune would never stop on it).

    Keys every result has are accepted at once; any other key is looked up in the result of
    one real training iteration (:func:`probe_result`), plus the episode metrics that only
    appear once an episode has ended.
    """
    config = build_algorithm_config(experiment)
    known = set(_TUNE_RESULT_KEYS)
    if config.enable_env_runner_and_connector_v2:
        known |= {STEPS_KEY} | _episode_result_keys(config)
    unknown = [key for key in experiment.stop if key not in known]
    if not unknown:
        return
    result = probe_result(experiment)
    for key in unknown:
        if key not in result:
            raise ExperimentError(
                f"unknown stop criterion {key!r}: no result of {experiment.name!r} has it, so "
                f"its trials would never stop{_close(key, known | set(result))}"
            )
        value = result[key]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ExperimentError(
                f"stop criterion {key!r} is not a number in the results of {experiment.name!r} "
                f"(e.g. {value!r})"
            )


def probe_result(experiment: Experiment) -> dict[str, Any]:
    """The flat ("a/b") result of one training iteration of ``experiment``'s first grid point.

    It runs in this process with one local env runner (one env) and a local learner, and
    evaluates in that iteration if the experiment evaluates at all; nothing is written.
    Ray is started if it is not running.
    """
    config = build_algorithm_config(experiment).copy(copy_frozen=False)
    config.env_runners(num_env_runners=0, num_envs_per_env_runner=1)
    config.learners(num_learners=0, num_gpus_per_learner=0)
    if config.evaluation_interval:
        config.evaluation(evaluation_interval=1, evaluation_num_env_runners=0)
    if getattr(config, "num_epochs", 1) > 1:
        config.training(num_epochs=1)
    made_results_dir = not os.path.isdir(_default_logdir_root())
    algo = None
    try:
        algo = config.build_algo()
        result = algo.train()
    except Exception as err:
        raise ExperimentError(
            f"one training iteration of {experiment.name!r} failed: {_one_line(err)}"
        ) from None
    finally:
        if algo is not None:
            algo.stop()
            _remove_empty_dir(algo.logdir)  # a Trainable outside Tune makes an empty logdir
            if made_results_dir:
                _remove_empty_dir(_default_logdir_root())
    result.pop("config", None)
    return flatten_result(result)


def _default_logdir_root() -> str:
    from ray.train.constants import DEFAULT_STORAGE_PATH

    return DEFAULT_STORAGE_PATH


def _remove_empty_dir(path: str | None) -> None:
    """rmdir, which only ever removes an empty directory."""
    if path:
        try:
            os.rmdir(path)
        except OSError:
            pass


def flatten_result(result: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Tune's flat "a/b" keys of a nested result (those of progress.csv and stop criteria)."""
    flat: dict[str, Any] = {}
    for key, value in result.items():
        if isinstance(value, Mapping):
            flat.update(flatten_result(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def run_experiment(
    experiment: Experiment,
    *,
    resume: bool = False,
    checkpoint_freq: int | None = None,
    progress_reporter: Any = None,
    verbose: int = 1,
    validate: bool = True,
) -> Any:
    """Validate ``experiment``, then run it with ``tune.run``; returns Tune's ExperimentAnalysis.

    With ``validate`` the stop criteria are checked too (:func:`check_stop_keys`).
    """
    from ray import tune

    if validate:
        validate_experiment(experiment)
        check_stop_keys(experiment)
    algo_cls = resolve_algorithm(experiment.run)
    checkpoint_config = _checkpoint_config(experiment.checkpoint_config, checkpoint_freq)
    return tune.run(
        algo_cls,
        name=experiment.name,
        config=to_param_space(experiment.config, algo_cls),
        stop=experiment.stop or None,
        num_samples=experiment.num_samples,
        storage_path=storage_path(experiment),
        checkpoint_config=checkpoint_config,
        resume="AUTO" if resume else None,
        progress_reporter=progress_reporter,
        verbose=verbose,
        raise_on_failed_trial=False,
    )
