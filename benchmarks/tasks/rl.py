"""Train an RLlib algorithm built from a config, then evaluate it with frozen weights.

Shared by the maze (A2C) and InvertedPendulum (PPO) tasks. Everything runs in this process
(no remote env runners or learners), so one small local Ray instance serves every run.
"""

from __future__ import annotations

import os
import time
from typing import Any

from ray.rllib.core.rl_module.rl_module import RLModuleSpec

from benchmarks.tasks.common import ModelSpec, RunResult
from rllib_stpn import STPNModel, SynapticPowerCallback, metrics
from rllib_stpn.evaluate import evaluate_algorithm, private_logdir_root

RETURN = (metrics.ENV_RUNNERS, metrics.EPISODE_RETURN_MEAN)
POWER = (metrics.ENV_RUNNERS, metrics.SYNAPTIC_POWER_MEAN)
STEPS = (metrics.ENV_RUNNERS, metrics.NUM_ENV_STEPS_SAMPLED_LIFETIME)


def init_ray() -> None:
    """A 1-CPU local Ray instance (RLlib needs one even when every actor is local)."""
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if not ray.is_initialized():
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)


def _get(result: dict[str, Any], path: tuple[str, str]) -> float | None:
    value = result.get(path[0], {}).get(path[1])
    return None if value is None else float(value)


def with_model(
    config: Any,
    spec: ModelSpec,
    seed: int,
    max_seq_len: int,
    extra_model_config: dict[str, Any] | None = None,
) -> Any:
    """`config` with STPNModel around `spec`'s core (plus `extra_model_config` keys, e.g. the
    authors' STPN options), the power callback and the seed."""
    return (
        config.rl_module(
            rl_module_spec=RLModuleSpec(
                module_class=STPNModel,
                model_config={
                    "core": spec.core,
                    "hidden_size": spec.hidden_size,
                    "plasticity": spec.plasticity,
                    "max_seq_len": max_seq_len,  # BPTT chunk length
                    **(extra_model_config or {}),
                },
            )
        )
        .callbacks(SynapticPowerCallback)
        .debugging(seed=seed)
    )


def train_and_evaluate(
    config: Any, seed: int, settings: dict[str, Any], *, explore: bool = True
) -> RunResult:
    """`settings["iterations"]` calls of `algo.train()`, then `settings["eval_episodes"]`
    episodes without training.

    The curve holds, per iteration, the env steps sampled so far, the mean return of the
    episodes finished in it (None when none finished) and the mean synaptic power per step
    (summed over the core's synapses) while sampling. The final metric is the mean return of
    the evaluation episodes, sampled from the policy (`explore=True`, the stochastic agent) by
    the local env runner that trained; its power is the mean and std over every evaluation step.
    """
    init_ray()
    start = time.perf_counter()
    with private_logdir_root():  # nothing left in ~/ray_results
        algo = config.build_algo()
        xs, returns, powers = [], [], []
        try:
            for _ in range(settings["iterations"]):
                result = algo.train()
                xs.append(_get(result, STEPS))
                returns.append(_get(result, RETURN))
                powers.append(_get(result, POWER))
            ev = evaluate_algorithm(algo, episodes=settings["eval_episodes"], explore=explore)
        finally:
            algo.stop()
    return RunResult(
        seed,
        ev["return_mean"],
        ev[metrics.SYNAPTIC_POWER_MEAN],
        ev[metrics.SYNAPTIC_POWER_STD],
        time.perf_counter() - start,
        xs,
        returns,
        powers,
        extra={
            "eval_returns": ev["returns"],
            "eval_episode_len_mean": ev["episode_len_mean"],
            "explore": explore,
        },
    )
