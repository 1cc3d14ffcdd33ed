"""Reproduce the STPN paper's comparisons at CPU-sized budgets and write docs/results.md.

    python -m benchmarks.reproduce --task art|maze|pendulum|cfd|all [--quick] [--seeds N]
                                   [--out DIR] [--models NAME,...] [--jobs N] [--report-only]

For each task, every model is trained for each seed on one torch thread, one run after
another (or in `--jobs N` worker processes at once). Then it writes, under `--out` (default
docs/): `results/<task>.json` (raw per-seed results, settings, timings, machine load),
`results/<task>_curves.png`, `results/<task>_power.png` and the task's section of
`results.md`. `--quick` runs tiny budgets (a smoke run of the whole pipeline) into a temporary
directory unless `--out` names another one; it never writes to docs/. `--report-only` redraws
the plots and the page from the JSON already there, without training.

`--models` runs only the named models (a row name such as "Fast Weights" or a core name such
as fastweights, case-insensitive) and merges them into the task's existing JSON, whose
settings and seeds must match: the way to add a core that was registered after the full run.

Task code lives in benchmarks/tasks/ (one module per task); supervised.py holds the training
loop ART and CFD share.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import multiprocessing
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from benchmarks.tasks import report
from benchmarks.tasks.common import ModelSpec, RunResult, mean_std

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
TASKS = report.TASK_ORDER  # ("art", "maze", "pendulum", "cfd")
DEFAULT_SEEDS = {"art": 5}  # cheap enough for the paper's 5 seeds; the others get 3


class UsageError(ValueError):
    """A bad command-line value; printed as one line."""


# ---------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of argparse's usage + error
        raise UsageError(message)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = _Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", required=True, help="art, maze, pendulum, cfd or all")
    p.add_argument("--quick", action="store_true", help="tiny budgets: a smoke run")
    p.add_argument("--seeds", help="seeds per model (default 5 for art, 3 otherwise)")
    p.add_argument("--out", help="output directory (default docs/; a temp dir with --quick)")
    p.add_argument("--models", help="comma-separated models to (re)run and merge")
    p.add_argument("--jobs", default="1", help="runs in parallel worker processes (default 1)")
    p.add_argument("--report-only", action="store_true", help="redraw plots and page from the JSON")
    args = p.parse_args(argv)
    allowed = (*TASKS, "all")
    if args.task not in allowed:
        raise UsageError(f"--task must be one of {', '.join(allowed)}; got {args.task!r}")
    if args.seeds is not None:
        try:
            args.seeds = int(args.seeds)
        except ValueError:
            raise UsageError(f"--seeds must be an integer >= 1; got {args.seeds!r}") from None
        if args.seeds < 1:
            raise UsageError(f"--seeds must be an integer >= 1; got {args.seeds}")
    cpus = os.cpu_count() or 1
    if not args.jobs.isdigit() or not 1 <= int(args.jobs) <= cpus:
        raise UsageError(f"--jobs must be an integer from 1 to {cpus} (CPUs); got {args.jobs!r}")
    args.jobs = int(args.jobs)
    if args.out is None:
        quick_dir = args.quick and not args.report_only
        args.out = tempfile.mkdtemp(prefix="stpn-reproduce-quick-") if quick_dir else DOCS
    args.out = Path(args.out).resolve()
    if args.quick and args.out == DOCS.resolve():
        raise UsageError(f"--quick never writes to {DOCS} (the real page); pass another --out")
    if args.models is not None:
        args.models = [m.strip() for m in args.models.split(",") if m.strip()]
        if not args.models:
            raise UsageError("--models must name at least one model, e.g. --models lstm,rnn")
    return args


def load_task(name: str) -> ModuleType:
    return importlib.import_module(f"benchmarks.tasks.{name}")


def selected(spec: ModelSpec, names: list[str] | None) -> bool:
    if names is None:
        return True
    wanted = {n.lower() for n in names}
    return spec.name.lower() in wanted or spec.core.lower() in wanted


# ---------------------------------------------------------------------------------------------
# One task: train every model for every seed
# ---------------------------------------------------------------------------------------------


def run_one(task_name: str, spec: dict[str, Any], settings: dict[str, Any], seed: int):
    """One seed of one model, here or in a worker process: a RunResult's fields, or the error
    that stopped the run (the other runs go on; the page says "failed")."""
    torch.set_num_threads(1)  # tiny matrices: more threads only contend on a shared machine
    task, model = load_task(task_name), ModelSpec(**spec)
    label = f"[{task_name}] {settings['variant']}, {model.name} H={model.hidden_size} seed {seed}"
    print(f"{label} ...", flush=True)
    try:
        result: RunResult = task.run(model, settings, seed)
    except Exception as err:
        traceback.print_exc()
        return {"seed": seed, "error": f"{type(err).__name__}: {err}"}
    power = "n/a" if result.power_mean is None else f"{result.power_mean:.3g}"
    print(
        f"{label}: {task.METRIC} {result.metric * task.METRIC_SCALE:.4g}, "
        f"power {power}, {result.seconds:.0f} s",
        flush=True,
    )
    return result.to_json()


def run_all(name: str, jobs: list[tuple[dict, dict, dict, int]], workers: int) -> list[float]:
    """Run (entry, spec, settings, seed) jobs, appending each result to its entry's "runs" in
    job order, in this process or in `workers` spawned processes; returns the 1-minute load
    averages sampled before each job and as each finishes."""
    loads = [os.getloadavg()[0]]
    if workers == 1:
        for entry, spec, settings, seed in jobs:
            entry["runs"].append(run_one(name, spec, settings, seed))
            loads.append(os.getloadavg()[0])
        return loads
    # spawn, not fork: the parent may hold Ray and torch threads that a fork would copy.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(run_one, name, spec, s, seed) for _, spec, s, seed in jobs]
        for (entry, *_), future in zip(jobs, futures):
            entry["runs"].append(future.result())
            loads.append(os.getloadavg()[0])
    return loads


def machine() -> dict[str, Any]:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    import ray

    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ray": ray.__version__,
        "torch_threads": torch.get_num_threads(),
        "git_commit": commit,
    }


def _previous(path: Path, names: list[str] | None) -> dict[str, Any] | None:
    """The task's existing JSON that a --models run merges into (None without --models)."""
    if names is None or not path.exists():
        return None
    import json

    old = json.loads(path.read_text())
    report.power_as_totals(old)  # before the merge: this run's power is a total
    return old


def check_mergeable(path: Path, variants: list[dict[str, Any]], names: list[str] | None) -> None:
    """Before any training: a --models run can merge into `path` only if it was made with the
    same settings and hidden sizes (seeds may differ per model)."""
    old = _previous(path, names)
    if old is None:
        return
    import json

    settings = json.loads(json.dumps([v["settings"] for v in variants]))
    if [v["settings"] for v in old["variants"]] != settings:
        raise UsageError(
            f"--models merges into {path}, but its settings differ from this run's; rerun the "
            "whole task (without --models) or move that file away first"
        )
    for old_v, new_v in zip(old["variants"], variants):
        previous = {(m["spec"]["core"], m["spec"]["plasticity"]): m for m in old_v["models"]}
        for model in new_v["models"]:
            before = previous.get((model["spec"]["core"], model["spec"]["plasticity"]))
            if model["rerun"] or not before or not before.get("runs"):
                continue
            if before["spec"]["hidden_size"] != model["spec"]["hidden_size"]:
                raise UsageError(
                    f"--models: {model['spec']['name']} ran at H={before['spec']['hidden_size']} "
                    f"in {path}, now H={model['spec']['hidden_size']}; rerun the whole task instead"
                )


def merge_previous(path: Path, result: dict[str, Any], names: list[str] | None) -> dict[str, Any]:
    """With --models: keep the other models' runs from the existing JSON (checked beforehand by
    `check_mergeable`); "seeds" becomes every seed that any model ran."""
    old = _previous(path, names)
    if old is None:
        return result
    for old_v, new_v in zip(old["variants"], result["variants"]):
        # Rows are matched by core and plasticity, so a renamed row keeps its runs.
        previous = {(m["spec"]["core"], m["spec"]["plasticity"]): m for m in old_v["models"]}
        for model in new_v["models"]:
            key = (model["spec"]["core"], model["spec"]["plasticity"])
            if not model["rerun"] and previous.get(key, {}).get("runs"):
                model["runs"] = previous[key]["runs"]
    result["seeds"] = sorted(set(old["seeds"]) | set(result["seeds"]))
    result["invocations"] = old["invocations"] + result["invocations"]
    return result


def run_task(name: str, args: argparse.Namespace) -> bool:
    """Train, then write JSON, plots and the page section; False if any run failed."""
    task = load_task(name)
    seeds = list(range(args.seeds or DEFAULT_SEEDS.get(name, 3)))
    command = "python -m benchmarks.reproduce " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if args.argv is None else args.argv)
    )
    started = dt.datetime.now().astimezone()
    t0 = time.perf_counter()
    variants, jobs, specs = [], [], []
    for settings in task.variants(args.quick):
        models = []
        for spec in task.models(settings):
            specs.append(spec)
            rerun = selected(spec, args.models)
            entry = {"spec": spec.to_json(), "rerun": rerun, "runs": []}
            if spec.unavailable and rerun:
                print(f"[{name}] {spec.name}: not available ({spec.unavailable})", flush=True)
            elif rerun:
                jobs += [(entry, spec.to_json(), settings, seed) for seed in seeds]
            models.append(entry)
        variants.append({"settings": settings, "models": models})
    unknown = [n for n in args.models or [] if not any(selected(s, [n]) for s in specs)]
    if unknown:
        names = sorted({s.name for s in specs} | {s.core for s in specs})
        raise UsageError(f"--models: no model {unknown} in {name}; models: {', '.join(names)}")
    json_path = args.out / "results" / f"{name}.json"
    check_mergeable(json_path, variants, args.models)  # before hours of training, not after
    loads = run_all(name, jobs, args.jobs)
    ok = all("error" not in run for entry, *_ in jobs for run in entry["runs"])
    load_mean, _ = mean_std(loads)
    invocation = {
        "command": command,
        "started": started.isoformat(timespec="seconds"),
        "wall_seconds": time.perf_counter() - t0,
        "models": args.models,
        "jobs": args.jobs,
        "load": {"mean": load_mean, "min": min(loads), "max": max(loads), "samples": loads},
        **machine(),
    }
    result = {
        "task": name,
        "title": task.TITLE,
        "metric": task.METRIC,
        "quick": args.quick,
        "power": report.POWER_TOTAL,
        "seeds": seeds,
        "invocations": [invocation],
        "variants": variants,
    }
    result = merge_previous(json_path, result, args.models)
    for variant in result["variants"]:
        for model in variant["models"]:
            model.pop("rerun", None)
    write_outputs(result, task, args.out)
    print(f"[{name}] done in {invocation['wall_seconds'] / 60:.1f} min", flush=True)
    return ok


def write_outputs(result: dict[str, Any], task: ModuleType, out: Path) -> None:
    """The task's JSON (with per-model summaries), its two plots and its page section."""
    for variant in result["variants"]:
        for model in variant["models"]:
            model["summary"] = report.summarize_model(model, task.METRIC_SCALE)
    json_path = out / "results" / f"{task.NAME}.json"
    report.write_json(json_path, result)
    images = report.plot_task(result, task, json_path.parent)
    section = report.markdown_section(result, task, [str(p.relative_to(out)) for p in images])
    report.update_page(out / "results.md", task.NAME, section)
    print(f"[{task.NAME}] wrote {json_path}, its plots and {out / 'results.md'}", flush=True)


def report_only(name: str, out: Path) -> None:
    """Rewrite plots and page section from the task's existing JSON (no training)."""
    import json

    path = out / "results" / f"{name}.json"
    if not path.exists():
        raise UsageError(f"--report-only needs {path}; run the task first")
    result, task = json.loads(path.read_text()), load_task(name)
    if report.power_as_totals(result):
        print(f"[{name}] power stored per neuron in {path}: rewritten as totals (x H)", flush=True)
    # Labels and the paper's numbers come from the task module as it is now (they are not
    # measurements); a row whose size changed since it ran keeps its old spec.
    for variant in result["variants"]:
        current = {(s.core, s.plasticity): s for s in task.models(variant["settings"])}
        for model in variant["models"]:
            spec = current.get((model["spec"]["core"], model["spec"]["plasticity"]))
            if spec is not None and spec.hidden_size == model["spec"]["hidden_size"]:
                for key in ("name", "paper_metric", "paper_power", "paper_source"):
                    model["spec"][key] = getattr(spec, key)
    write_outputs(result, task, out)


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except UsageError as err:
        print(f"reproduce.py: error: {err}", file=sys.stderr)
        return 2
    args.argv = argv
    names = TASKS if args.task == "all" else (args.task,)
    ok = True
    for name in names:
        try:
            if args.report_only:
                report_only(name, args.out)
            else:
                ok &= run_task(name, args)
        except UsageError as err:
            print(f"reproduce.py: error: {err}", file=sys.stderr)
            return 2
    print(f"results in {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
