"""The ``rllib`` command: ``train file``, ``evaluate`` and ``plot`` (Ray 2.60 ships none).

Usage errors (bad file, YAML, run, env, config key or value, JSON option, stop criterion, too few
CPUs, unusable paths or checkpoints) print one ``rllib: error:`` line to stderr and exit with
code 2, before Tune writes any result directory. Ctrl-C during training exits with 130 after
printing how to continue the run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from rllib_stpn._extras import MissingExtraError
from rllib_stpn.experiments.errors import ExperimentError

__all__ = ["main"]

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # the shell's code for a command ended by Ctrl-C (SIGINT)


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line (and ExperimentError, so main exits with 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        where = self.prog.removeprefix("rllib").strip()  # "train file", "evaluate", ...
        raise ExperimentError(f"{where}: {message}" if where else message)


def _json_option(name: str) -> Any:
    def parse(text: str) -> Any:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            raise ExperimentError(f"{name} is not valid JSON ({err.msg}): {text}") from None
        if not isinstance(value, dict):
            raise ExperimentError(f"{name} must be a JSON object, got: {text}")
        return value

    return parse


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="rllib", description="Train, evaluate and plot RLlib agents (rllib-stpn)."
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = sub.add_parser("train", help="train from a tuned-example file")
    train_sub = train.add_subparsers(dest="train_command", required=True, parser_class=_Parser)
    tf = train_sub.add_parser("file", help="run the experiments of a YAML file through Tune")
    tf.add_argument("file", help="tuned-example YAML file")
    tf.add_argument("--stop", type=str, help="stop criteria as JSON (replaces the file's)")
    tf.add_argument("--config", type=str, help="JSON merged over the file's config")
    tf.add_argument("--storage-path", help="where Tune writes results (default ~/ray_results)")
    tf.add_argument("--num-samples", type=int, help="trials per grid point")
    tf.add_argument("--checkpoint-freq", type=int, help="checkpoint every N iterations")
    tf.add_argument("--resume", action="store_true", help="resume the run of the same name")
    tf.add_argument("--num-cpus", type=int, help="CPUs Ray may use (default: all)")
    tf.add_argument("-v", "--verbose", action="store_true", help="show Ray's worker logs")

    ev = sub.add_parser("evaluate", help="run a trained agent from a checkpoint")
    ev.add_argument("checkpoint", help="checkpoint dir (or a trial/experiment dir: newest one)")
    ev.add_argument("--episodes", type=int, default=10, help="episodes to run (default 10)")
    ev.add_argument(
        "--explore",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="sample actions from the policy (default) or act greedily (--no-explore)",
    )
    ev.add_argument("--seed", type=int, help="env/model seed")
    ev.add_argument("--out", help="write the result as JSON to this file")
    ev.add_argument("-v", "--verbose", action="store_true", help="show Ray's logs")

    pl = sub.add_parser("plot", help="plot return and synaptic power of Tune runs")
    pl.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="experiment or trial dirs")
    pl.add_argument("--out", help="directory for the PNGs (default: the first RUN_DIR)")
    return parser


def _quiet(verbose: bool, uses_ray: bool) -> None:
    """Keep the terminal to our table: no Ray/RLlib warnings unless -v.

    Importing Ray configures its loggers (levels included), so Ray is imported first.
    """
    if verbose:
        return
    warnings.filterwarnings("ignore")
    if uses_ray:
        import ray  # noqa: F401
    for name in ("ray", "ray.rllib", "ray.tune"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _init_ray(verbose: bool, num_cpus: int | None = None) -> None:
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=num_cpus,
            include_dashboard=False,
            log_to_driver=verbose,
            logging_level=logging.INFO if verbose else logging.ERROR,
        )


def _train(args: argparse.Namespace) -> int:
    from rllib_stpn import experiments as ex
    from rllib_stpn.checkpoints import check_resume

    stop = _json_option("--stop")(args.stop) if args.stop is not None else None
    override = _json_option("--config")(args.config) if args.config is not None else None
    if args.num_samples is not None and args.num_samples < 1:
        raise ExperimentError(f"--num-samples must be >= 1, got {args.num_samples}")
    if args.checkpoint_freq is not None and args.checkpoint_freq < 0:
        raise ExperimentError(f"--checkpoint-freq must be >= 0, got {args.checkpoint_freq}")
    if args.num_cpus is not None and args.num_cpus < 1:
        raise ExperimentError(f"--num-cpus must be >= 1, got {args.num_cpus}")
    if args.num_cpus is not None and _cluster_address():
        raise ExperimentError(
            "--num-cpus starts a local Ray, but RAY_ADDRESS connects to an existing cluster "
            f"({_cluster_address()}); drop one of them"
        )
    exps = ex.load_experiments(
        args.file,
        config_override=override,
        stop=stop,
        num_samples=args.num_samples,
        storage_path=args.storage_path,
    )
    for exp in exps:  # every experiment is checked before the first one starts
        ex.validate_experiment(exp)
        if args.resume and "://" not in ex.storage_path(exp):
            check_resume(os.path.join(ex.storage_path(exp), exp.name))
        if args.num_cpus is not None:
            ex.check_resources(exp, {"CPU": args.num_cpus}, "--num-cpus gives it only")

    # Tune's table reporter (the new output engine would print every RLlib metric).
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    _init_ray(args.verbose, args.num_cpus)
    if not _cluster_address():  # a cluster may grow; a local Ray does not
        import ray

        for exp in exps:
            ex.check_resources(exp, ray.cluster_resources(), "the local Ray has only")
    for exp in exps:
        ex.check_stop_keys(exp)
    from rllib_stpn.callbacks import NonFiniteWarning

    failed = 0
    for exp in exps:
        analysis = ex.run_experiment(
            exp,
            resume=args.resume,
            checkpoint_freq=args.checkpoint_freq,
            progress_reporter=ex.make_progress_reporter(exp),
            verbose=1,
            validate=False,
            callbacks=[NonFiniteWarning()],
        )
        errors, unfinished = _summarize_run(exp, analysis)
        failed += errors
        if unfinished:  # Ctrl-C: Tune saved the state and returned; later experiments wait
            print(_resume_hint(f"{unfinished} trial(s) of {exp.name!r}"), file=sys.stderr)
            return EXIT_INTERRUPTED
    return 1 if failed else 0


def _cluster_address() -> str | None:
    """The Ray cluster RAY_ADDRESS points at, or None for a local Ray ("local" or unset)."""
    address = os.environ.get("RAY_ADDRESS", "").strip()
    return address if address and address != "local" else None


def _resume_hint(unfinished: str | None = None) -> str:
    what = f" with {unfinished} unfinished" if unfinished else ""
    return f"rllib: interrupted{what}; continue with the same command and --resume"


def _summarize_run(exp: Any, analysis: Any) -> tuple[int, int]:
    """Print where results and checkpoints are; returns the numbers of failed and of
    unfinished trials (those an interrupted run left before their stop criterion)."""
    from rllib_stpn.metrics import POWER_KEY, RETURN_KEY

    failed = unfinished = 0
    print(f"\n{exp.name}: results in {analysis.experiment_path}")
    for trial in analysis.trials:
        last = trial.last_result or {}
        ret = _nested(last, RETURN_KEY)
        power = _nested(last, POWER_KEY)
        ckpt = trial.checkpoint.path if trial.checkpoint else "none"
        if trial.status == "ERROR":
            failed += 1
            print(f"  {trial.trial_id} ERROR, see {trial.path}/error.txt", file=sys.stderr)
            continue
        # After Ctrl-C Tune marks running trials TERMINATED too; only a trial that met its
        # stop criterion has `done` in its last result.
        done = trial.status == "TERMINATED" and bool(last.get("done"))
        unfinished += not done
        note = "" if done else " (unfinished: continue with --resume)"
        print(
            f"  {trial}: iter {last.get('training_iteration', 0)}, return {_num(ret)}, "
            f"power {_num(power)}, checkpoint {ckpt}{note}"
        )
    return failed, unfinished


def _nested(result: dict, key: str) -> Any:
    value: Any = result
    for part in key.split("/"):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _num(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, int | float) else "n/a"


def _evaluate(args: argparse.Namespace) -> int:
    from rllib_stpn import evaluate as ev

    if args.episodes < 1:
        raise ExperimentError(f"--episodes must be >= 1, got {args.episodes}")
    if args.out:  # before the evaluation, not after it
        ev.check_output_file(args.out)
    checkpoint = ev.find_checkpoint(args.checkpoint)  # a bad path fails before Ray starts
    _init_ray(args.verbose, None)
    result = ev.evaluate_checkpoint(
        checkpoint, episodes=args.episodes, explore=args.explore, seed=args.seed
    )
    print(ev.format_table(result))
    if args.out:
        print(f"saved {ev.write_json(result, args.out)}")
    return 0


def _plot(args: argparse.Namespace) -> int:
    from rllib_stpn import plot

    for path in plot.plot_runs(args.run_dirs, args.out):
        print(f"wrote {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rllib`` console script and of ``python -m rllib_stpn``."""
    command = None
    try:
        args = _build_parser().parse_args(argv)
        command = args.command
        _quiet(getattr(args, "verbose", False), uses_ray=command in ("train", "evaluate"))
        if command == "train":
            return _train(args)
        if command == "evaluate":
            return _evaluate(args)
        return _plot(args)
    except (ExperimentError, MissingExtraError) as err:
        print(f"rllib: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # a second Ctrl-C, or one before Tune took over
        print(_resume_hint() if command == "train" else "rllib: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
