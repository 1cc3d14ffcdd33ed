"""The tuned-example file: YAML -> :class:`Experiment` objects, overrides and grid searches.

A file maps experiment names to ``{run, env, stop, config, checkpoint_config, num_samples, ...}``
exactly as Ray's old ``rllib train file`` read them; old-stack stop keys are mapped to their
new-stack result keys here. Tune search spaces are written as ``{grid_search: [...]}``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from rllib_stpn.experiments.errors import ExperimentError, did_you_mean
from rllib_stpn.metrics import ENV_RUNNERS, RETURN_KEY, STEPS_KEY

__all__ = [
    "Experiment",
    "deep_merge",
    "grid_keys",
    "is_grid",
    "load_experiments",
    "parse_experiments",
    "variants",
]

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


_MAX_VALIDATED_VARIANTS = 64
# The most values an experiment file may hold (aliases counted each time they are used).
MAX_VALUES = 100_000


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


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` merged into a copy of ``base``; nested dicts merge key by key."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) and not is_grid(value):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def is_grid(value: Any) -> bool:
    return isinstance(value, Mapping) and set(value) == {"grid_search"}


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
    check_size(data, source)
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
                f"unknown key {key!r} in experiment {name!r}{did_you_mean(key, _EXPERIMENT_KEYS)}; "
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

        exp_stop = stop if stop is not None else (spec.get("stop") or {})
        ckpt = spec.get("checkpoint_config") or {}
        if not isinstance(ckpt, Mapping):
            raise ExperimentError(
                f"'checkpoint_config' of experiment {name!r} must be a mapping, got {ckpt!r}"
            )
        ckpt = dict(ckpt)
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


def check_size(data: Any, source: str, limit: int = MAX_VALUES) -> None:
    """Refuse more than ``limit`` values, counting a value each time it is reached: YAML
    aliases nested a few levels deep expand to billions (an "alias bomb"), and every later walk
    over the config would take that long."""
    count = 0
    stack = [data]
    while stack:
        value = stack.pop()
        count += 1
        if count > limit:
            raise ExperimentError(
                f"{source} is too large: more than {limit} values once its YAML aliases "
                "(&anchor / *alias) are expanded; write the values out or use fewer aliases"
            )
        if isinstance(value, Mapping):
            stack.extend(value.values())
        elif isinstance(value, list | tuple):
            stack.extend(value)


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


def variants(config: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every grid-search variant of ``config`` (at most _MAX_VALIDATED_VARIANTS of them)."""
    from ray.tune.search.variant_generator import generate_variants

    for i, (_, resolved) in enumerate(generate_variants(copy.deepcopy(dict(config)))):
        if i >= _MAX_VALIDATED_VARIANTS:
            return
        yield resolved


def grid_keys(config: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Flattened paths ("a/b") of the grid-searched values, for the progress table."""
    keys = []
    for key, value in config.items():
        if is_grid(value):
            keys.append(prefix + str(key))
        elif isinstance(value, Mapping):
            keys.extend(grid_keys(value, f"{prefix}{key}/"))
    return keys
