"""Checks that need the Algorithm itself: its resource request, and the stop keys, looked up
in the result of one real training iteration when they are not keys every result has."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from rllib_stpn.experiments.checks import build_algorithm_config, resolve_algorithm
from rllib_stpn.experiments.errors import ExperimentError, did_you_mean, one_line
from rllib_stpn.experiments.yaml_format import Experiment, variants
from rllib_stpn.metrics import STEPS_KEY

__all__ = [
    "check_resources",
    "check_stop_keys",
    "probe_result",
    "trial_resources",
]


def trial_resources(experiment: Experiment) -> dict[str, float]:
    """The resources (``{"CPU": n, "GPU": m}``) one trial needs, the largest over grid points.

    This is the Algorithm's own resource request: its main process, env runners, learners and
    evaluation env runners.
    """
    algo_cls = resolve_algorithm(experiment.run)
    needed: dict[str, float] = {}
    for variant in variants(experiment.config):
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
                f"its trials would never stop{did_you_mean(key, known | set(result))}"
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
            f"one training iteration of {experiment.name!r} failed: {one_line(err)}"
        ) from None
    finally:
        if algo is not None:
            algo.stop()
            _remove_empty_dir(algo.logdir)  # a Trainable outside Tune makes an empty logdir
            if made_results_dir:
                _remove_empty_dir(_default_logdir_root())
    result.pop("config", None)
    from ray.tune.utils import flatten_dict

    return flatten_dict(result)  # the "a/b" keys of progress.csv and stop criteria


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
