"""Run a trained agent from a checkpoint: return and per-step synaptic power (paper Tables 3, 4).

The weights are frozen (no training step). The algorithm is rebuilt from the checkpoint's own
config with a single local env runner and one env, so a checkpoint of a 512-maze or 64-Pong run
evaluates on a laptop.
"""

from __future__ import annotations

import contextlib
import json
import math
import pickle
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from rllib_stpn.checkpoints import checkpoint_problem, find_checkpoint
from rllib_stpn.experiments.checks import check_writable_dir
from rllib_stpn.experiments.errors import ExperimentError, one_line
from rllib_stpn.metrics import (
    POWER_CAUSE,
    SYNAPTIC_POWER,
    SYNAPTIC_POWER_MEAN,
    SYNAPTIC_POWER_STD,
)

__all__ = [
    "check_output_file",
    "checkpoint_problem",
    "evaluate_algorithm",
    "evaluate_checkpoint",
    "find_checkpoint",
    "format_table",
    "non_finite",
    "summarize",
]


def check_output_file(path: str | Path) -> None:
    """Fail unless a JSON file can be written at ``path`` (its directories may be created).

    Checked by writing, as ``os.access`` says yes to root even where a write fails.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise ExperimentError(f"--out {path} is a directory; give a file name")
    check_writable_dir(path.absolute().parent, "--out directory")
    if path.exists():
        try:
            with open(path, "a"):
                pass
        except OSError as err:
            raise ExperimentError(f"--out {path} cannot be written: {err.strerror}") from None


@contextlib.contextmanager
def private_logdir_root() -> Iterator[None]:
    """An Algorithm built outside Tune makes an (empty) logdir ~/ray_results/<timestamp>;
    evaluating (or a benchmark run) should leave nothing there, so its root is a temporary
    directory while the context is open: build, train and stop the Algorithm inside it."""
    from ray.tune.trainable import trainable

    saved = trainable.DEFAULT_STORAGE_PATH
    with tempfile.TemporaryDirectory(prefix="rllib-evaluate-") as root:
        trainable.DEFAULT_STORAGE_PATH = root
        try:
            yield
        finally:
            trainable.DEFAULT_STORAGE_PATH = saved


# A non-finite value of these result keys is reported, with its likely cause.
NON_FINITE_CAUSES = {
    "return_mean": "the env's rewards are not finite",
    SYNAPTIC_POWER_MEAN: POWER_CAUSE,
}


def non_finite(result: dict[str, Any]) -> list[str]:
    """The keys of ``NON_FINITE_CAUSES`` whose value in ``result`` is inf or NaN."""
    return [
        key
        for key in NON_FINITE_CAUSES
        if isinstance(result.get(key), float) and not math.isfinite(result[key])
    ]


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / n)


def summarize(returns: Sequence[float], lengths: Sequence[int], powers: Sequence[float]) -> dict:
    """Mean and std of episode return and length and of the per-step power (over all steps).

    Each power value is one step's P_t summed over all of the core's synapses (SPEC section 1).
    """
    ret_mean, ret_std = _mean_std(list(returns))
    len_mean, len_std = _mean_std([float(x) for x in lengths])
    pow_mean, pow_std = _mean_std(list(powers))
    return {
        "episodes": len(returns),
        "return_mean": ret_mean,
        "return_std": ret_std,
        "episode_len_mean": len_mean,
        "episode_len_std": len_std,
        SYNAPTIC_POWER_MEAN: None if not powers else pow_mean,
        SYNAPTIC_POWER_STD: None if not powers else pow_std,
        "returns": [float(r) for r in returns],
        "episode_lengths": [int(x) for x in lengths],
    }


def _load_algorithm(checkpoint: Path, seed: int | None) -> Any:
    if not (checkpoint / "class_and_ctor_args.pkl").is_file():
        return _load_old_stack_algorithm(checkpoint, seed)
    try:
        with open(checkpoint / "class_and_ctor_args.pkl", "rb") as f:
            info = pickle.load(f)
        algo_cls = info["class"]
        args, kwargs = info["ctor_args_and_kwargs"]
        config = kwargs.get("config", args[0] if args else None)
    except Exception as err:
        raise ExperimentError(f"cannot read checkpoint {checkpoint}: {one_line(err)}") from None
    if isinstance(config, dict):  # Tune hands algorithms a (partial) config dict
        config = algo_cls.get_default_config().update_from_dict(config)
    elif hasattr(config, "copy"):
        config = config.copy(copy_frozen=False)
    else:
        raise ExperimentError(f"checkpoint {checkpoint} holds no AlgorithmConfig")
    try:
        algo = algo_cls(config=_local(config, seed))
    except Exception as err:
        raise ExperimentError(
            f"cannot rebuild the algorithm of {checkpoint}: {one_line(err)}"
        ) from None
    try:
        algo.restore_from_path(str(checkpoint))
    except Exception as err:
        algo.stop()
        raise ExperimentError(f"cannot restore checkpoint {checkpoint}: {one_line(err)}") from None
    return algo


def _local(config: Any, seed: int | None) -> Any:
    """One local runner with one env; no evaluation workers, no remote learners."""
    config.env_runners(num_env_runners=0, num_envs_per_env_runner=1)
    config.learners(num_learners=0, num_gpus_per_learner=0)
    config.evaluation(evaluation_interval=None, evaluation_num_env_runners=0)
    if seed is not None:
        config.debugging(seed=seed)
    return config


def _load_old_stack_algorithm(checkpoint: Path, seed: int | None) -> Any:
    """Old API stack checkpoints (format 1.x: algorithm_state.pkl + policies/)."""
    from ray.rllib.algorithms.algorithm import Algorithm
    from ray.rllib.utils.checkpoints import get_checkpoint_info

    try:
        state = Algorithm._checkpoint_info_to_algorithm_state(get_checkpoint_info(checkpoint))
        algo_cls = state["algorithm_class"]
        config = state["config"]
        if isinstance(config, dict):
            config = algo_cls.get_default_config().update_from_dict(config)
        else:
            config = config.copy(copy_frozen=False)
    except Exception as err:
        raise ExperimentError(f"cannot read checkpoint {checkpoint}: {one_line(err)}") from None
    state["config"] = _local(config, seed)
    try:
        return Algorithm.from_state(state)
    except Exception as err:
        raise ExperimentError(f"cannot restore checkpoint {checkpoint}: {one_line(err)}") from None


def _episodes_new_stack(algo: Any, episodes: int, explore: bool) -> tuple[list, list, list]:
    returns, lengths, powers = [], [], []
    done = algo.env_runner.sample(num_episodes=episodes, explore=explore, random_actions=False)
    for ep in done[:episodes]:
        returns.append(float(ep.get_return()))
        lengths.append(len(ep))
        try:
            power = ep.get_extra_model_outputs(SYNAPTIC_POWER)
        except (KeyError, IndexError):
            continue
        powers.extend(float(p) for p in list(power))
    return returns, lengths, powers


def _episodes_old_stack(algo: Any, episodes: int, explore: bool) -> tuple[list, list, list]:
    """The classic compute_single_action loop (ModelV2 policies, e.g. STPNModelV2).

    ModelV2 policies report no synaptic power (STPNModelV2 has no such output), so the power
    list stays empty and the summary's power is None.
    """
    env = algo.env_creator(algo.config.env_config)
    policy = algo.get_policy()
    returns, lengths = [], []
    seed = algo.config.seed
    for i in range(episodes):
        obs, _ = env.reset(seed=None if seed is None else seed + i)
        state = policy.get_initial_state()
        total, steps, done = 0.0, 0, False
        while not done:
            action, state, _ = algo.compute_single_action(
                obs, state=state, explore=explore, full_fetch=True
            )
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            steps += 1
            done = terminated or truncated
        returns.append(total)
        lengths.append(steps)
    env.close()
    return returns, lengths, []


def evaluate_algorithm(algo: Any, *, episodes: int = 10, explore: bool = True) -> dict[str, Any]:
    """Run ``episodes`` episodes of a built algorithm's agent, weights frozen (no training).

    Uses the algorithm's local env runner on the new API stack (build it with
    ``num_env_runners=0``), the classic ``compute_single_action`` loop on the old one. Returns
    ``summarize``'s dict: mean and std of the return, the length and the per-step power.
    """
    if episodes < 1:
        raise ExperimentError(f"episodes must be >= 1, got {episodes}")
    if algo.config.enable_env_runner_and_connector_v2:
        returns, lengths, powers = _episodes_new_stack(algo, episodes, explore)
    else:
        returns, lengths, powers = _episodes_old_stack(algo, episodes, explore)
    return summarize(returns, lengths, powers)


def evaluate_checkpoint(
    checkpoint: str | Path, *, episodes: int = 10, explore: bool = True, seed: int | None = None
) -> dict[str, Any]:
    """Run ``episodes`` episodes of the agent in ``checkpoint`` without training.

    ``explore=True`` samples actions from the policy (the stochastic agent the paper tests);
    ``explore=False`` takes the greedy action. Ray must be initialised (or is started locally).
    """
    if episodes < 1:
        raise ExperimentError(f"episodes must be >= 1, got {episodes}")
    checkpoint = find_checkpoint(checkpoint)
    import rllib_stpn

    rllib_stpn.register()  # the checkpoint's env id or "stpn" model must resolve
    with private_logdir_root():
        algo = _load_algorithm(checkpoint, seed)
        try:
            result = evaluate_algorithm(algo, episodes=episodes, explore=explore)
            env = algo.config.env
        finally:
            algo.stop()
    result.update(
        {
            "checkpoint": str(checkpoint),
            "algorithm": type(algo).__name__,
            "env": env if isinstance(env, str) else repr(env),
            "explore": explore,
        }
    )
    result["non_finite"] = non_finite(result)
    return result


def _fmt(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "n/a"
    return f"{mean:.4g} ± {std:.3g}"


def format_table(result: dict[str, Any]) -> str:
    """A small text table of an ``evaluate_checkpoint`` result."""
    rows = [
        ("checkpoint", result["checkpoint"]),
        ("algorithm / env", f"{result['algorithm']} / {result['env']}"),
        ("episodes", f"{result['episodes']} ({'explore' if result['explore'] else 'greedy'})"),
        ("return", _fmt(result["return_mean"], result["return_std"])),
        ("episode length", _fmt(result["episode_len_mean"], result["episode_len_std"])),
        (
            "synaptic power / step (sum over synapses)",
            _fmt(result[SYNAPTIC_POWER_MEAN], result[SYNAPTIC_POWER_STD]),
        ),
    ]
    rows += [
        ("NON-FINITE", f"{key} is {result[key]}: {NON_FINITE_CAUSES[key]}")
        for key in result.get("non_finite", ())
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def write_json(result: dict[str, Any], path: str | Path) -> Path:
    """Save ``result`` as JSON (NaN and infinity written as null, the keys listed under
    "non_finite"); parent directories are created."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    clean = {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in result.items()
    }
    path.write_text(json.dumps(clean, indent=2) + "\n")
    return path
