"""Training curves from Tune run directories (the paper's Figures 2-4), one line per trial.

Reads every trial's results below the given directories (Tune's ``result.json``, or its
``progress.csv`` when there is no JSON) and writes three PNGs: return vs env steps, synaptic
power vs env steps and power vs return.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rllib_stpn.experiments.checks import check_writable_dir
from rllib_stpn.experiments.errors import ExperimentError
from rllib_stpn.metrics import ENV_RUNNERS, POWER_KEY, RETURN_KEY, STEPS_KEY, SYNAPTIC_POWER_MEAN

__all__ = ["find_trials", "plot_runs", "read_progress", "read_results"]

# New-stack names first, then the old stack's.
_STEPS = (STEPS_KEY, f"{ENV_RUNNERS}/{STEPS_KEY}", "timesteps_total")
_RETURN = (RETURN_KEY, "episode_reward_mean", f"{ENV_RUNNERS}/episode_reward_mean")
_POWER = (POWER_KEY, SYNAPTIC_POWER_MEAN)
# P_t summed over all of the core's synapses (SPEC section 1), not a per-neuron mean.
POWER_LABEL = "synaptic power per step (sum over synapses)"
FIGURES = ("return_vs_steps.png", "power_vs_steps.png", "power_vs_return.png")
RESULT_FILES = ("result.json", "progress.csv")  # Tune's per-trial results, the first preferred
ITERATION_KEY = "training_iteration"


def find_trials(run_dirs: Sequence[str | Path]) -> list[Path]:
    """Trial directories (with a result.json or progress.csv) at or below each of ``run_dirs``."""
    trials: list[Path] = []
    for run_dir in run_dirs:
        run_dir = Path(run_dir).expanduser()
        if not run_dir.is_dir():
            raise ExperimentError(f"run directory not found: {run_dir}")
        found = sorted(
            {p.parent for name in RESULT_FILES for p in run_dir.rglob(name) if p.is_file()}
        )
        if not found:
            raise ExperimentError(f"no result.json or progress.csv (Tune trial) in {run_dir}")
        trials.extend(p for p in found if p not in trials)
    return trials


def _float(value: Any) -> float:
    if isinstance(value, bool):
        return math.nan
    try:
        return float(value) if value not in (None, "") else math.nan
    except (TypeError, ValueError):
        return math.nan


def _rows_from_json(path: Path) -> list[dict[str, Any]]:
    """One flat dict per line of Tune's result.json; a line cut off by a kill is skipped."""
    from ray.tune.utils import flatten_dict  # Tune's own "a/b" keys (those of progress.csv)

    rows = []
    with open(path, "rb") as f:
        for line in f:
            try:
                result = json.loads(line)  # bytes: UTF-8 (or -16/-32), else skipped
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(result, dict):
                result.pop("config", None)
                rows.append(flatten_dict(result))
    return rows


def _rows_from_csv(path: Path) -> list[dict[str, Any]]:
    """Rows of progress.csv that match its header.

    After a resume Tune appends rows with the new run's columns under the old header without
    writing a new one; such rows cannot be attributed to columns and are left out.
    """
    with open(path, newline="", errors="replace") as f:  # undecodable bytes: not numbers
        reader = csv.reader(f)
        header = next(reader, [])
        return [dict(zip(header, row)) for row in reader if len(row) == len(header)]


def read_results(trial_dir: str | Path) -> list[dict[str, Any]]:
    """The flat results of one trial, one per training iteration, in iteration order.

    Reads result.json (falling back to progress.csv). A resumed trial redoes the iterations
    after its last checkpoint, so an iteration can appear more than once: the last occurrence
    is the one the continued run built on, and it is the one kept.
    """
    trial_dir = Path(trial_dir)
    json_path, csv_path = (trial_dir / name for name in RESULT_FILES)
    if json_path.is_file() and json_path.stat().st_size > 0:
        rows = _rows_from_json(json_path)
    elif csv_path.is_file():
        rows = _rows_from_csv(csv_path)
    else:
        raise ExperimentError(f"no result.json or progress.csv in {trial_dir}")
    by_iteration: dict[float, dict[str, Any]] = {}
    for row in rows:
        iteration = _float(row.get(ITERATION_KEY))
        if not math.isnan(iteration):
            by_iteration[iteration] = row  # a later occurrence replaces an earlier one
    return [by_iteration[i] for i in sorted(by_iteration)]


def read_progress(trial_dir: str | Path) -> dict[str, list[float]]:
    """``{"iteration", "steps", "return", "power"}`` series of one trial (NaN where missing)."""
    rows = read_results(trial_dir)
    columns = set().union(*rows) if rows else set()

    def series(names: Sequence[str]) -> list[float]:
        name = next((n for n in names if n in columns), None)
        return [_float(r.get(name)) if name else math.nan for r in rows]

    return {
        "iteration": series((ITERATION_KEY,)),
        "steps": series(_STEPS),
        "return": series(_RETURN),
        "power": series(_POWER),
    }


def _label(trial_dir: Path) -> str:
    """The trial dir name without Tune's date suffix, e.g. "A2C_stpn_Maze-v0_1a2b3_00000_0"."""
    return re.sub(r"_\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}$", "", trial_dir.name)


def plot_runs(run_dirs: Sequence[str | Path], out_dir: str | Path | None = None) -> list[Path]:
    """Write the three figures for every trial below ``run_dirs``; returns the PNG paths."""
    from rllib_stpn._extras import require

    matplotlib = require("matplotlib", "plot", "rllib plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trials = find_trials(run_dirs)
    out = Path(out_dir if out_dir is not None else run_dirs[0]).expanduser().absolute()
    check_writable_dir(out, "--out")
    data = {trial: read_progress(trial) for trial in trials}
    if not any(_points(series, x, y) for series in data.values() for x, y, *_ in _SPECS):
        raise ExperimentError(
            f"nothing to plot: none of the {len(trials)} trial(s) under "
            f"{', '.join(map(str, run_dirs))} has env steps with a return or synaptic power"
        )
    created = [p for p in (out, *out.parents) if not p.exists()]
    written: list[Path] = []
    try:
        out.mkdir(parents=True, exist_ok=True)
        _draw(plt, data, out, written)
    except BaseException as err:
        if created:  # an --out made for these figures goes again, with what is in it
            for path in written:
                path.unlink(missing_ok=True)
            for folder in created:  # deepest first
                try:
                    folder.rmdir()
                except OSError:
                    pass
        if isinstance(err, OSError):
            raise ExperimentError(f"--out {out} cannot be written: {err}") from None
        raise
    return written


_SPECS = [
    ("steps", "return", "environment steps", "episode return (mean)", FIGURES[0]),
    ("steps", "power", "environment steps", POWER_LABEL, FIGURES[1]),
    ("return", "power", "episode return (mean)", POWER_LABEL, FIGURES[2]),
]


def _points(series: dict[str, list[float]], x_key: str, y_key: str) -> list[tuple[float, float]]:
    """The (x, y) pairs of one trial where both are finite."""
    return [
        (x, y)
        for x, y in zip(series[x_key], series[y_key])
        if math.isfinite(x) and math.isfinite(y)
    ]


def _draw(plt: Any, data: dict[Path, dict[str, list[float]]], out: Path, written: list) -> None:
    for x_key, y_key, x_label, y_label, filename in _SPECS:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for trial, series in data.items():
            points = _points(series, x_key, y_key)
            if not points:
                continue
            xs, ys = zip(*points)
            if x_key == "return":  # a scatter: consecutive iterations jump back and forth
                ax.plot(xs, ys, "o", markersize=3, alpha=0.6, label=_label(trial))
            else:
                ax.plot(xs, ys, "-", label=_label(trial))
        if not ax.lines:
            ax.text(0.5, 0.5, f"no {y_key} data", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel(x_label)
        ax.set_ylabel(y_label)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        path = out / filename
        written.append(path)
        try:
            fig.savefig(path, dpi=120)
        except OSError as err:
            raise ExperimentError(f"cannot write {path}: {err.strerror or err}") from None
        finally:
            plt.close(fig)
