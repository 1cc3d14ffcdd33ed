"""The Tune run of a validated experiment, with its progress table."""

from __future__ import annotations

from typing import Any

from rllib_stpn.experiments.checks import (
    make_checkpoint_config,
    resolve_algorithm,
    storage_path,
    validate_experiment,
)
from rllib_stpn.experiments.probe import check_stop_keys
from rllib_stpn.experiments.translate import to_param_space
from rllib_stpn.experiments.yaml_format import Experiment, grid_keys
from rllib_stpn.metrics import POWER_KEY, RETURN_KEY, STEPS_KEY

__all__ = ["METRIC_COLUMNS", "make_progress_reporter", "run_experiment"]

# Result keys shown by the progress display (rllib_stpn.metrics; `rllib plot` reads them too).
METRIC_COLUMNS = {
    "training_iteration": "iter",
    STEPS_KEY: "env steps",
    RETURN_KEY: "return",
    POWER_KEY: "power",
    "time_total_s": "time (s)",
}


def make_progress_reporter(experiment: Experiment, max_report_frequency: int = 10) -> Any:
    """Tune's table reporter showing return, power and env steps (plus the grid-searched keys)."""
    from ray.tune import CLIReporter

    params = grid_keys(to_param_space(experiment.config, resolve_algorithm(experiment.run)))
    return CLIReporter(
        metric_columns=METRIC_COLUMNS,
        parameter_columns={k: k.split("/")[-1] for k in params} or None,
        max_report_frequency=max_report_frequency,
        print_intermediate_tables=True,
    )


def run_experiment(
    experiment: Experiment,
    *,
    resume: bool = False,
    checkpoint_freq: int | None = None,
    progress_reporter: Any = None,
    verbose: int = 1,
    validate: bool = True,
    callbacks: list | None = None,
) -> Any:
    """Validate ``experiment``, then run it with ``tune.run``; returns Tune's ExperimentAnalysis.

    With ``validate`` the stop criteria are checked too (:func:`check_stop_keys`).
    ``callbacks`` are Tune callbacks (e.g. ``rllib_stpn.callbacks.NonFiniteWarning``).
    """
    from ray import tune

    if validate:
        validate_experiment(experiment)
        check_stop_keys(experiment)
    algo_cls = resolve_algorithm(experiment.run)
    checkpoint_config = make_checkpoint_config(experiment.checkpoint_config, checkpoint_freq)
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
        callbacks=callbacks,
    )
