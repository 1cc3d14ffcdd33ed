"""PPO on a CPU-sized POPGym suite, every memory core at equal parameter counts.

    python -m benchmarks.popgym_suite [--budget X] [--envs A,B] [--cores c,d] [--seeds N]
                                      [--jobs N] [--address ADDR] [--out DIR] [--report-only]

Needs the `[popgym]` extra (and `[plot]` for the curves). Each run (env, core, seed) trains
PPO for `--budget` x 150,000 env steps and writes `<out>/runs/<env>/<core>/seed<k>.json`: its
settings, parameter count, per-iteration curve (env steps, mean episodic return, synaptic
power), final return, max-mean return and wall time. A run whose JSON exists already, with
the same settings, is skipped, so an interrupted suite resumes. Then `benchmarks.popgym_report`
writes `<out>.md` (docs/popgym.md for the default --out docs/popgym) from every JSON there.

Runs go to `--jobs` spawned worker processes (default 2, this machine's cores), one torch
thread and one local Ray instance each; `--budget` scales every run for bigger machines. With
`--address` (e.g. `auto` after `ray start`) every run is a 1-CPU Ray task on that cluster, at
most `--jobs` at a time if given: benchmarks/ is shipped to the workers, rllib-stpn[popgym]
must be installed on every node, and the JSON is written on this (the driver's) machine.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import socket
import sys
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks import popgym_report
from rllib_stpn.nn.cores import CORES

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "docs" / "popgym"

# POPGym's Easy level of six families: four diagnostic memory tasks and two control tasks with
# the velocities hidden (one of them noisy).
SUITE_ENVS: tuple[str, ...] = (
    "RepeatPreviousEasy",
    "RepeatFirstEasy",
    "CountRecallEasy",
    "AutoencodeEasy",
    "PositionOnlyCartPoleEasy",
    "NoisyPositionOnlyPendulumEasy",
)
SUITE_CORES: tuple[str, ...] = CORES  # every memory core
DEFAULT_SEEDS = 3
STEPS_PER_BUDGET = 150_000

# Every core gets the parameter count (core + policy and value heads, at the encoder's output
# size) of an STPN with ANCHOR_HIDDEN units; the encoder, the same for every core, is apart.
ANCHOR_CORE, ANCHOR_HIDDEN = "stpn", 64
ENCODER_HIDDENS = [64]

# PPO, the same for every run. gamma and the value-loss weight are POPGym's baselines'
# (popgym/baselines/ppo.py); the batch is cut from their 65,536 steps to fit a CPU budget.
PPO = {
    "train_batch": 2000,
    "minibatch": 500,
    "num_epochs": 5,
    "lr": 5e-4,
    "gamma": 0.99,
    "lambda": 0.95,
    "clip_param": 0.2,
    "vf_loss_coeff": 1.0,
    "entropy_coeff": 0.0,
    "num_envs": 8,
    "max_seq_len": 100,
    # RLlib's episode_return_mean averages the last this many finished episodes.
    "smoothing_episodes": 20,
}


class UsageError(ValueError):
    """A bad command-line value; printed as one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise UsageError(message)


def _subset(value: str | None, allowed: tuple[str, ...], flag: str) -> list[str]:
    if value is None:
        return list(allowed)
    names = [v.strip() for v in value.split(",") if v.strip()]
    bad = [n for n in names if n not in allowed]
    if not names or bad:
        raise UsageError(f"{flag} got {bad or value!r}; allowed: {', '.join(allowed)}")
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from rllib_stpn.envs.popgym import POPGYM_TASKS  # the suite may name any POPGym task

    p = _Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", default="1", help="multiple of 150,000 env steps per run")
    p.add_argument("--envs", help="comma-separated POPGym tasks (default: the six of the suite)")
    p.add_argument("--cores", help="comma-separated cores (default: every core)")
    p.add_argument("--seeds", default=str(DEFAULT_SEEDS), help="seeds 0..N-1 (default 3)")
    p.add_argument(
        "--jobs", help="runs at a time (default 2 worker processes; on a cluster, its CPUs)"
    )
    p.add_argument(
        "--address",
        help="run on this Ray cluster ('auto': the one `ray start` began here), a task a run",
    )
    p.add_argument("--out", default=str(DEFAULT_OUT), help="results directory")
    p.add_argument("--report-only", action="store_true", help="write the page from the JSON")
    args = p.parse_args(argv)
    tasks = tuple(sorted(POPGYM_TASKS.values()))
    args.envs = list(SUITE_ENVS) if args.envs is None else _subset(args.envs, tasks, "--envs")

    args.cores = _subset(args.cores, tuple(CORES), "--cores")
    try:
        budget = float(args.budget)
    except ValueError:
        budget = float("nan")
    if not 0 < budget < float("inf"):
        raise UsageError(f"--budget must be a positive number, got {args.budget!r}")
    args.budget = budget
    if args.address is not None and not args.address.strip():
        raise UsageError("--address must name a Ray cluster (e.g. auto or host:port), got ''")
    if args.jobs is None:
        args.jobs = None if args.address else "2"
    for flag in ("seeds", "jobs"):
        value = getattr(args, flag)
        if value is None:
            continue
        if not value.isdigit() or int(value) < 1:
            raise UsageError(f"--{flag} must be a positive integer, got {value!r}")
        setattr(args, flag, int(value))
    args.out = Path(args.out)
    return args


def env_sizes(task: str) -> tuple[int, int]:
    """(observation size, policy outputs) of popgym/<task>-v0 as wrapped here."""
    from rllib_stpn.envs.popgym import make_popgym

    from rllib_stpn.nn.cores import action_dist_input_size

    env = make_popgym(task=task)
    sizes = int(env.observation_space.shape[0]), action_dist_input_size(env.action_space)
    env.close()
    return sizes


def core_size(core: str, num_outputs: int) -> tuple[int, int]:
    """(hidden size, core + heads parameters) matching the anchor STPN's count."""
    from rllib_stpn.model_config import core_hidden_size_for_params, count_core_parameters

    features = ENCODER_HIDDENS[-1]
    target = count_core_parameters(ANCHOR_CORE, features, ANCHOR_HIDDEN, num_outputs=num_outputs)
    h = core_hidden_size_for_params(target, core=core, input_size=features, num_outputs=num_outputs)
    return h, count_core_parameters(core, features, h, num_outputs=num_outputs)


def settings_for(task: str, core: str, budget: float) -> dict[str, Any]:
    obs_size, outputs = env_sizes(task)
    hidden, params = core_size(core, outputs)
    iterations = max(1, round(budget * STEPS_PER_BUDGET / PPO["train_batch"]))
    return {
        "env": f"popgym/{task}-v0",
        "task": task,
        "core": core,
        "hidden_size": hidden,
        "core_and_head_params": params,
        "anchor": f"{ANCHOR_CORE} H={ANCHOR_HIDDEN}",
        "encoder_hiddens": ENCODER_HIDDENS,
        "obs_size": obs_size,
        "budget": budget,
        "iterations": iterations,
        "env_steps": iterations * PPO["train_batch"],
        "previous_action": True,
        **PPO,
    }


def ppo_config(s: dict[str, Any], seed: int):
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    from rllib_stpn import STPNModel, SynapticPowerCallback

    return (
        PPOConfig()
        .environment(s["env"], env_config={"previous_action": s["previous_action"]})
        .env_runners(num_env_runners=0, num_envs_per_env_runner=s["num_envs"])
        .training(
            train_batch_size_per_learner=s["train_batch"],
            minibatch_size=s["minibatch"],
            num_epochs=s["num_epochs"],
            lr=s["lr"],
            gamma=s["gamma"],
            lambda_=s["lambda"],
            clip_param=s["clip_param"],
            vf_loss_coeff=s["vf_loss_coeff"],
            entropy_coeff=s["entropy_coeff"],
        )
        .rl_module(
            rl_module_spec=RLModuleSpec(
                module_class=STPNModel,
                model_config={
                    "core": s["core"],
                    "hidden_size": s["hidden_size"],
                    "encoder": "mlp",
                    "encoder_hiddens": s["encoder_hiddens"],
                    "max_seq_len": s["max_seq_len"],
                },
            )
        )
        .callbacks(SynapticPowerCallback)
        .reporting(metrics_num_episodes_for_smoothing=s["smoothing_episodes"])
        .debugging(seed=seed)
    )


def run_path(out: Path, task: str, core: str, seed: int) -> Path:
    return out / "runs" / task / core / f"seed{seed}.json"


def train(settings: dict[str, Any], seed: int) -> dict[str, Any]:
    """One run: `iterations` PPO iterations; the curve and the summary numbers."""
    import ray
    import torch

    import rllib_stpn
    from rllib_stpn import metrics
    from rllib_stpn.evaluate import private_logdir_root

    torch.set_num_threads(1)  # tiny matrices: more threads only contend on a shared machine
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if not ray.is_initialized():
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    rllib_stpn.register()
    start = time.perf_counter()
    with private_logdir_root():  # nothing left in ~/ray_results
        algo = ppo_config(settings, seed).build_algo()
        steps, returns, powers, seconds = [], [], [], []
        try:
            for _ in range(settings["iterations"]):
                r = algo.train()[metrics.ENV_RUNNERS]
                seconds.append(time.perf_counter() - start)
                steps.append(int(r[metrics.NUM_ENV_STEPS_SAMPLED_LIFETIME]))
                ret, power = r.get(metrics.EPISODE_RETURN_MEAN), r.get(metrics.SYNAPTIC_POWER_MEAN)
                returns.append(None if ret is None else float(ret))
                powers.append(None if power is None else float(power))
        finally:
            algo.stop()
    seen = [v for v in returns if v is not None]
    tail = seen[-max(1, len(seen) // 10) :]  # the last tenth of the iterations with episodes
    return {
        "seed": seed,
        "settings": settings,
        "curve": {
            "env_steps": steps,
            "return_mean": returns,
            "synaptic_power_mean": powers,
            "wall_s": seconds,  # since the start of the run, set-up included
        },
        "final_return": sum(tail) / len(tail) if tail else None,
        "max_mean_return": max(seen) if seen else None,
        "wall_s": time.perf_counter() - start,
        "load_1min_end": os.getloadavg()[0],  # other jobs on the machine slow a run down
        "torch": torch.__version__,
        "ray": ray.__version__,
    }


def _todo(out: str, task: str, core: str, seed: int, budget: float):
    """(label, JSON path, settings, status line) of a run; the status line (and no settings)
    when there is nothing to run: its JSON holds these settings already, or a step failed."""
    label = f"{task} {core} seed {seed}"
    try:
        path = run_path(Path(out), task, core, seed)
        settings = settings_for(task, core, budget)
        if path.exists() and popgym_report.read_run(path)["settings"] == settings:
            return label, path, None, f"{label}: done already ({path})"
    except Exception as err:  # one failed run must not stop the suite
        return label, None, None, _failed(label, err)
    return label, path, settings, None


def _start_line(label: str, settings: dict[str, Any]) -> str:
    return f"{label}: H={settings['hidden_size']}, {settings['env_steps']:,} steps ..."


def _save(label: str, path: Path, result: dict[str, Any]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")  # a stopped suite leaves no half-written JSON
    part.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(part, path)
    final = result["final_return"]
    final_s = "n/a" if final is None else f"{final:.3f}"
    return f"{label}: final return {final_s}, {result['wall_s']:.0f} s -> {path}"


def _failed(label: str, err: BaseException) -> str:
    lines = str(err).strip().splitlines() or [""]
    return f"{label}: FAILED {type(err).__name__}: {lines[-1]}"


def run_one(out: str, task: str, core: str, seed: int, budget: float) -> str:
    """Train one (env, core, seed) unless its JSON holds these settings; returns a status line."""
    label, path, settings, status = _todo(out, task, core, seed, budget)
    if status:
        return status
    print(_start_line(label, settings), flush=True)
    try:
        result = train(settings, seed)
    except Exception as err:  # one failed run must not stop the suite
        traceback.print_exc()
        return _failed(label, err)
    return _save(label, path, result)


def run_on_ray(calls: list[tuple], jobs: int | None) -> Iterator[str]:
    """Every run as a Ray task (1 CPU) on the connected cluster, at most `jobs` at a time (None:
    as many as its CPUs take); each JSON is written here, on the driver. Yields status lines."""
    import ray

    # By module name, not __main__: the workers import it (shipped as a py_module).
    from benchmarks.popgym_suite import train as train_here

    remote_train = ray.remote(num_cpus=1, max_retries=0)(train_here)
    queue, running = [], {}
    for out, task, core, seed, budget in calls:
        label, path, settings, status = _todo(out, task, core, seed, budget)
        if status:
            yield status
        else:
            queue.append((label, path, settings, seed))
    while queue or running:
        while queue and (jobs is None or len(running) < jobs):
            label, path, settings, seed = queue.pop(0)
            running[remote_train.remote(settings, seed)] = (label, path)
            print(_start_line(label, settings), flush=True)
        (ref,), _ = ray.wait(list(running), num_returns=1)
        label, path = running.pop(ref)
        try:
            result = ray.get(ref)
        except Exception as err:  # one failed run must not stop the suite
            yield _failed(label, err)
            continue
        yield _save(label, path, result)


def _check_listening(address: str) -> None:
    """A host:port where nothing listens is an error now: Ray would retry it for minutes."""
    host, sep, port = address.split("://")[-1].rpartition(":")
    if not sep or not port.isdigit():
        return  # auto, local: Ray resolves them
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as err:
        raise UsageError(f"--address {address!r}: nothing answers there ({err})") from None


def connect(address: str) -> None:
    """Join the Ray cluster at `address`, shipping benchmarks/ to its workers."""
    import ray

    _check_listening(address)
    try:
        ray.init(
            address=address,
            runtime_env={"py_modules": [str(ROOT / "benchmarks")]},
            log_to_driver=False,
        )
    except (ConnectionError, RuntimeError, ValueError) as err:
        first = (str(err).strip().splitlines() or [""])[0]
        if "RAY_AUTH_MODE" not in os.environ:  # Ray 2.60 sends no token to a host:port by itself
            first += "; if the cluster uses token authentication, set RAY_AUTH_MODE=token"
        raise UsageError(f"--address {address!r}: no Ray cluster to join ({first})") from None


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        from rllib_stpn._extras import require

        if not args.report_only:  # the page needs only the JSON
            require("popgym", "popgym", "benchmarks.popgym_suite")
    except (UsageError, ImportError) as err:
        print(f"popgym_suite: error: {err}", file=sys.stderr)
        return 2
    if not args.report_only:
        jobs = [(t, c, s) for t in args.envs for c in args.cores for s in range(args.seeds)]
        start = time.perf_counter()
        at_once = args.jobs or "as many as the cluster's CPUs take"
        print(f"{len(jobs)} runs, {at_once} at a time, results under {args.out}", flush=True)
        call = [(str(args.out), t, c, s, args.budget) for t, c, s in jobs]
        if args.address:
            import ray

            try:
                connect(args.address)
            except UsageError as err:
                print(f"popgym_suite: error: {err}", file=sys.stderr)
                return 2
            try:
                for line in run_on_ray(call, args.jobs):
                    print(line, flush=True)
            finally:
                ray.shutdown()
        elif args.jobs == 1:
            for line in (run_one(*a) for a in call):
                print(line, flush=True)
        else:
            # spawn, not fork: the parent may hold torch threads that a fork would copy.
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(args.jobs, mp_context=ctx) as pool:
                for line in pool.map(run_one, *zip(*call)):
                    print(line, flush=True)
        print(f"suite wall time {time.perf_counter() - start:.0f} s", flush=True)
    try:
        page = popgym_report.write_report(args.out)
    except ValueError as err:  # a JSON that is not a run's: named, kept
        print(f"popgym_suite: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
