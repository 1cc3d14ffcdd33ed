"""RLlib callback that reports the synaptic power emitted by STPNModel while sampling, and a
Tune callback that warns once when a training metric (power, loss) stops being finite."""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from typing import Any, TextIO

import numpy as np
from ray.rllib.callbacks.callbacks import RLlibCallback
from ray.tune import Callback as TuneCallback

from rllib_stpn.metrics import (
    LOSS_CAUSE,
    POWER_CAUSE,
    SYNAPTIC_POWER,
    SYNAPTIC_POWER_MEAN,
)

__all__ = ["NonFiniteWarning", "SynapticPowerCallback", "non_finite_metrics"]


class SynapticPowerCallback(RLlibCallback):
    """Logs `synaptic_power_mean` into the env runners' metrics (new API stack).

    The value is the mean, over every step sampled in the iteration, of the "synaptic_power"
    column STPNModel writes per step (P_t summed over all of the core's synapses, SPEC
    section 1). It appears in `result["env_runners"]["synaptic_power_mean"]` (and under
    `result["evaluation"]` for evaluation runners, i.e. the inference power the paper
    reports), in progress.csv and in TensorBoard. Use it with
    `config.callbacks(SynapticPowerCallback)`.

    Each `sample()` call logs one value (its mean over all its steps); RLlib averages those
    of one iteration, so with several env runners it is a mean of per-runner means.
    """

    def on_sample_end(
        self, *, env_runner: Any = None, metrics_logger: Any = None, samples: Any = None, **kw
    ) -> None:
        if metrics_logger is None or not samples:
            return
        chunks = []
        for episode in samples:
            # Multi-agent episodes hold one single-agent episode per agent.
            for ep in getattr(episode, "agent_episodes", {None: episode}).values():
                if SYNAPTIC_POWER in ep.extra_model_outputs and len(ep) > 0:
                    chunks.append(np.asarray(ep.get_extra_model_outputs(SYNAPTIC_POWER)))
        if chunks:
            values = np.concatenate([c.reshape(-1) for c in chunks])
            metrics_logger.log_value(SYNAPTIC_POWER_MEAN, float(values.mean()), reduce="mean")


def non_finite_metrics(result: Mapping[str, Any], prefix: str = "") -> list[tuple[str, float]]:
    """``(flat key, value)`` of every synaptic-power or loss value in a training result that
    is inf or NaN (the learner's losses, the env runners' and evaluation's power)."""
    found = []
    for key, value in result.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            if key != "config":
                found += non_finite_metrics(value, f"{name}/")
        elif (
            isinstance(value, float)
            and not math.isfinite(value)
            and (SYNAPTIC_POWER in str(key) or "loss" in str(key))
        ):
            found.append((name, value))
    return found


class NonFiniteWarning(TuneCallback):
    """Warns once per metric (on stderr, in the driver: a trial's own logs are hidden) when
    the synaptic power or a loss of a trial becomes inf or NaN, naming the likely cause.

    Training goes on: Tune's table shows the value, this says what it means.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self._warned: set[str] = set()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info):
        for key, value in non_finite_metrics(result):
            metric = key.rsplit("/", 1)[-1]
            if metric in self._warned:
                continue
            self._warned.add(metric)
            cause = POWER_CAUSE if SYNAPTIC_POWER in metric else LOSS_CAUSE
            print(
                f"rllib: warning: {key} is {value} in trial {trial} at iteration "
                f"{result.get('training_iteration')}: {cause}",
                file=self._stream or sys.stderr,
                flush=True,
            )
