"""The Tune run of a validated experiment, with its progress table."""

from __future__ import annotations

from collections.abc import Mapping
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

__all__ = ["METRIC_COLUMNS", "make_progress_reporter", "model_core", "run_experiment", "trial_name"]

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


def model_core(config: Mapping[str, Any]) -> str | None:
    """The memory core a resolved param space (:func:`to_param_space`) trains, or None.

    The ``core`` of ``custom_model: stpn`` (STPNModel or STPNModelV2; "stpn" when not given),
    "lstm" for RLlib's own model with ``use_lstm``, None for any other model.
    """
    from rllib_stpn.model_config import DEFAULT_MODEL_CONFIG
    from rllib_stpn.rl_module import STPNModel

    default = DEFAULT_MODEL_CONFIG["core"]
    model_config = config.get("_model_config")
    model_config = model_config if isinstance(model_config, Mapping) else {}
    spec = config.get("_rl_module_spec")
    module_class = getattr(spec, "module_class", None)
    if isinstance(module_class, type) and issubclass(module_class, STPNModel):
        return str(model_config.get("core", default))
    if spec is not None and not hasattr(spec, "module_class") and "core" in model_config:
        # When Tune names a trial, objects in its config are still reference placeholders;
        # a "core" key is STPNModel's (RLlib's own model configs have none).
        return str(model_config["core"])
    old = config.get("model")
    old = old if isinstance(old, Mapping) else {}
    if old.get("custom_model") == "stpn":
        return str((old.get("custom_model_config") or {}).get("core", default))
    if model_config.get("use_lstm") or old.get("use_lstm"):
        return "lstm"
    return None


def trial_name(trial: Any) -> str:
    """Tune's trial name ``<run>_<core>_<env>_<trial id>``, e.g. ``A2C_lstm_Maze-v0_3f2a1_00000``.

    Tune's own name is ``<run>_<env>_<trial id>`` with "/" made "_", so an env id's namespace
    reads like a core (``A2C_stpn_Maze-v0_...`` for an LSTM on ``stpn/Maze-v0``). Here the
    namespace is dropped and the model's core (:func:`model_core`) named when there is one.
    The trial's directory name starts with it too.
    """
    env = trial.config.get("env")
    if isinstance(env, type):
        env = env.__name__
    parts = [trial.trainable_name, model_core(trial.config)]
    parts.append(str(env).rpartition("/")[2] if env is not None else None)
    return "_".join(str(p) for p in [*parts, trial.trial_id] if p)


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
        trial_name_creator=trial_name,
        verbose=verbose,
        raise_on_failed_trial=False,
        callbacks=callbacks,
    )
