"""RLlib's classic tuned-example YAML format, translated to AlgorithmConfig and run through Tune.

A file maps experiment names to ``{run, env, stop, config, checkpoint_config, num_samples, ...}``
exactly as Ray's old ``rllib train file`` read them. ``config`` holds AlgorithmConfig keys (``lr``,
``gamma``, ``num_env_runners``, ``model: {...}``); Tune search spaces are written as
``{grid_search: [...]}``. ``model: {custom_model: stpn, custom_model_config: {...}}`` selects
:class:`rllib_stpn.STPNModel` on the new API stack (and ``STPNModelV2`` on the old one).

Everything a user can get wrong is checked before Tune creates a single directory, and is
reported as one :class:`ExperimentError` line. One job a module, each importing only those
before it:

- ``errors``: ExperimentError and the helpers that phrase it;
- ``yaml_format``: the file -> :class:`Experiment` objects, overrides, grid searches;
- ``translate``: a classic config dict -> the AlgorithmConfig dict Tune receives;
- ``checks``: run, env, values, counts, model build, checkpoint settings, storage path;
- ``probe``: checks that need the Algorithm (resources, stop keys via one real iteration);
- ``run``: the Tune run and its progress table.

No module imports Ray at import time (the ``rllib`` command's ``--help`` stays light).
"""

from __future__ import annotations

from rllib_stpn.experiments.checks import (
    build_algorithm_config,
    check_env,
    check_writable_dir,
    make_checkpoint_config,
    resolve_algorithm,
    storage_path,
    validate_experiment,
)
from rllib_stpn.experiments.errors import ExperimentError, check_keys, did_you_mean, one_line
from rllib_stpn.experiments.probe import (
    _TUNE_RESULT_KEYS as _TUNE_RESULT_KEYS,
)
from rllib_stpn.experiments.probe import (
    _episode_result_keys as _episode_result_keys,
)
from rllib_stpn.experiments.probe import (
    check_resources,
    check_stop_keys,
    probe_result,
    trial_resources,
)
from rllib_stpn.experiments.run import (
    METRIC_COLUMNS,
    make_progress_reporter,
    model_core,
    run_experiment,
    trial_name,
)
from rllib_stpn.experiments.translate import to_param_space
from rllib_stpn.experiments.yaml_format import (
    Experiment,
    deep_merge,
    grid_keys,
    is_grid,
    load_experiments,
    parse_experiments,
    variants,
)
from rllib_stpn.metrics import POWER_KEY as POWER_KEY
from rllib_stpn.metrics import RETURN_KEY as RETURN_KEY
from rllib_stpn.metrics import STEPS_KEY as STEPS_KEY

__all__ = [
    "Experiment",
    "ExperimentError",
    "METRIC_COLUMNS",
    "build_algorithm_config",
    "check_env",
    "check_keys",
    "check_resources",
    "check_stop_keys",
    "check_writable_dir",
    "deep_merge",
    "did_you_mean",
    "grid_keys",
    "is_grid",
    "load_experiments",
    "make_checkpoint_config",
    "make_progress_reporter",
    "model_core",
    "one_line",
    "parse_experiments",
    "probe_result",
    "resolve_algorithm",
    "run_experiment",
    "storage_path",
    "to_param_space",
    "trial_name",
    "trial_resources",
    "validate_experiment",
    "variants",
]

# The names these had when they were private helpers of one module (kept for old callers).
_variants = variants
_grid_keys = grid_keys
_one_line = one_line
