"""Every column, metric and result key the package writes or reads, spelled once.

Plain strings (no Ray import): the `rllib` command and the plotting code read them without
loading RLlib. The RLlib names among them (ENV_RUNNERS, the return and step counters) are
checked against RLlib's own constants in tests/test_rl_module.py.
"""

from __future__ import annotations

# Per-step column of STPNModel's sampling output: P_t summed over all of the core's synapses
# (SPEC section 1), one value per sample and step.
SYNAPTIC_POWER = "synaptic_power"
# SynapticPowerCallback's metric (mean of the column over an iteration's steps), and the keys
# of `rllib evaluate`'s summary (mean and std over every evaluation step).
SYNAPTIC_POWER_MEAN = f"{SYNAPTIC_POWER}_mean"
SYNAPTIC_POWER_STD = f"{SYNAPTIC_POWER}_std"

# RLlib's result sections and counters (ray.rllib.utils.metrics).
ENV_RUNNERS = "env_runners"  # ENV_RUNNER_RESULTS
EPISODE_RETURN_MEAN = "episode_return_mean"
NUM_ENV_STEPS_SAMPLED_LIFETIME = "num_env_steps_sampled_lifetime"

# Flattened result keys (Tune's progress.csv, the progress table, `rllib plot`).
RETURN_KEY = f"{ENV_RUNNERS}/{EPISODE_RETURN_MEAN}"
POWER_KEY = f"{ENV_RUNNERS}/{SYNAPTIC_POWER_MEAN}"
STEPS_KEY = NUM_ENV_STEPS_SAMPLED_LIFETIME

# What a non-finite value of these metrics most likely means (training warning, evaluation).
POWER_CAUSE = (
    "the synaptic state F grew without bound; likely cause: an STPN core with normalize: false "
    "and no f_clamp (set normalize: true or an f_clamp)"
)
LOSS_CAUSE = (
    "training diverged; likely cause: non-finite model outputs (see the synaptic power) or a "
    "learning rate too high"
)
