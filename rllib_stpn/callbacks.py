"""RLlib callback that reports the synaptic power emitted by STPNModel while sampling."""

from __future__ import annotations

from typing import Any

import numpy as np
from ray.rllib.callbacks.callbacks import RLlibCallback

from rllib_stpn.metrics import SYNAPTIC_POWER, SYNAPTIC_POWER_MEAN


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
