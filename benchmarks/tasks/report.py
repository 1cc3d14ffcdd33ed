"""The results page: per-task JSON, plots and the task's section of results.md.

A task's result (what `reproduce.py` writes to `results/<task>.json`) holds its variants; each
variant holds its settings and, per model, the spec and one RunResult per seed. Everything on
the page is computed from that JSON: nothing is typed in by hand except the paper's numbers,
which the task modules quote.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path
from typing import Any

from benchmarks.tasks.common import mean_std

TASK_ORDER = ("art", "maze", "pendulum", "cfd")
BEGIN, END = "<!-- reproduce:{task}:begin -->", "<!-- reproduce:{task}:end -->"

PAGE_HEADER = """# Results: STPN against its baselines at CPU-sized budgets

Every number on this page was measured by `python -m benchmarks.reproduce --task TASK`, which
trains each model of the task for several seeds, writes the raw per-seed results (with the
exact settings and timings) to `docs/results/TASK.json`, draws the plots next to it and
rewrites the task's section below. `--task all` runs the four tasks one after another;
`--quick` is a smoke run of the same pipeline with tiny budgets that writes to a temporary
directory (or `--out DIR`), never to this page.

The budgets are CPU-sized (minutes to hours per task on a 2-core machine), far below the
paper's, so absolute numbers are not comparable with the paper's; the orderings are what we
compare. Values are mean ± standard deviation over seeds (population std, ddof=0).

Power is the paper's synaptic power at inference (SPEC section 1, Eq. 9), a total over the
layer: P_t = Σ_i Σ_j z_t[j]² |G_t[i, j]|, summed over every synapse of the memory core (the
STPN's W + F after normalisation; all 4H gate rows of the LSTM, input and recurrent; the RNN's
input and recurrent weights; the MLP's weight matrix; the plastic cores' applied efficacies;
biases excluded), per step, averaged over every evaluation step of a seed; the ± is over seeds.
The total, not a mean per neuron, is what the paper's Table 4 reports: the authors' code sums
each layer's per-neuron power over the postsynaptic neurons (`torch.sum(..., dim=-1)` in
Scripts/Nets.py; `model._energy.sum(-1)` in AtariMujoco/eval-pong.py and
AtariMujoco/rllib_utils.py, github.com/NeuromorphicComputing/stpn). A per-neuron mean is the
total divided by H.

**Which LSTM.** The LSTM rows (and the RNN and MLP rows) are STPNModel's cores in the layout
the paper's numbers come from, the same as the STPN rows': in InvertedPendulum the core reads
the raw observation and linear policy and value heads read the core, H=64 for every core (the
authors' AtariMujoco/rllib_nets.py, `TorchMLP_RNNModel` with `use_mlp` off); in the maze and
ART the authors' own networks, likewise a core between the inputs and linear read-outs, at
equal parameter counts. RLlib's default LSTM module, which STPNModel reproduces exactly with
`rllib_stpn.rllib_lstm.rllib_lstm_model_config` (docs/fidelity.md), is a different model: a
[256, 256] tanh MLP before a 256-unit LSTM, 594,179 parameters on InvertedPendulum with one
LSTM for both heads and 1,187,587 with the separate value LSTM a plain-dict config gets,
against 18,115 for the paper's H=64 LSTM. Set beside the paper's rows it would compare a
different architecture 33-66 times larger, so these rows do not use it; where a task's
comparison is "STPN against RLlib's LSTM", that configuration is the one to use.

The paper's numbers are quoted from its Tables 1-4 as printed. A model whose core is not
registered in this checkout is listed as "not available". "Against the paper" lists every pair
of models that we rank differently from the paper, and says when the two are within one
standard deviation.
"""

# ---------------------------------------------------------------------------------------------
# Numbers
# ---------------------------------------------------------------------------------------------

POWER_LABEL = "power / step (sum over synapses)"
# The result JSON's "power" key: what its power numbers are. Results written before power became
# a total lack the key and hold per-neuron means P_t / H (see `power_as_totals`).
POWER_TOTAL = "total over the core's synapses"


def power_as_totals(result: dict[str, Any]) -> bool:
    """Turn a result stored with per-neuron power (P_t / H, no "power" key) into totals, in place.

    Every power of a run (mean, std, curve) is multiplied by its model's H: exact, since the
    total is the sum of the H per-neuron terms and the mean and std over steps are linear in it.
    Each converted run records the factor in `extra["power_times_hidden_size"]`. Returns
    whether anything was converted.
    """
    if result.get("power") == POWER_TOTAL:
        return False
    for variant in result["variants"]:
        for model in variant["models"]:
            H = model["spec"].get("hidden_size")
            for run in model.get("runs", []):
                if H is None or "error" in run:
                    continue
                for key in ("power_mean", "power_std"):
                    if run.get(key) is not None:
                        run[key] *= H
                run["curve_power"] = [None if v is None else v * H for v in run["curve_power"]]
                run.setdefault("extra", {})["power_times_hidden_size"] = H
    result["power"] = POWER_TOTAL
    return True


def _converted_note(result: dict[str, Any]) -> str | None:
    converted = any(
        "power_times_hidden_size" in run.get("extra", {})
        for variant in result["variants"]
        for model in variant["models"]
        for run in model.get("runs", [])
    )
    if not converted:
        return None
    return (
        "Power: these runs stored the mean per neuron, P_t / H (this package's measure before "
        "it became the total); the table and plots show it multiplied by the model's H, which "
        "is exactly the total (the per-step sum over the H neurons' rows is linear)."
    )


def summarize_model(model: dict[str, Any], scale: float) -> dict[str, Any]:
    """Mean and std over seeds of the final metric (times `scale`) and the inference power."""
    runs = [r for r in model.get("runs", []) if "error" not in r]
    metric = mean_std([r["metric"] * scale for r in runs])
    power = mean_std([r["power_mean"] for r in runs])
    seconds = mean_std([r["seconds"] for r in runs])
    return {
        "seeds": [r["seed"] for r in runs],
        "metric_mean": metric[0],
        "metric_std": metric[1],
        "power_mean": power[0],
        "power_std": power[1],
        "seconds_per_seed": seconds[0],
    }


def paper_mean(text: str | None) -> float | None:
    """The mean of a quoted paper number, "98.55 ± 2.76" -> 98.55."""
    if not text:
        return None
    match = re.match(r"\s*(-?[\d.]+)", text)
    return float(match.group(1)) if match else None


def fmt(mean: float | None, std: float | None, digits: int = 2) -> str:
    if mean is None or math.isnan(mean):
        return "–"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


# ---------------------------------------------------------------------------------------------
# Comparison with the paper's ordering, in words
# ---------------------------------------------------------------------------------------------


def compare_orderings(
    rows: list[tuple[str, float, float, float | None]], higher_is_better: bool, what: str
) -> str:
    """One paragraph: the paper's ranking, ours, and every pair the two rank differently.

    `rows` holds (name, our mean, our std, the paper's mean) for models with both numbers.
    """
    rows = [r for r in rows if r[3] is not None]
    if len(rows) < 2:
        return f"{what}: fewer than two models have both our number and the paper's."
    sign = -1.0 if higher_is_better else 1.0
    paper = sorted(rows, key=lambda r: sign * r[3])
    ours = sorted(rows, key=lambda r: sign * r[1])
    rel = " > " if higher_is_better else " < "
    word = "above" if higher_is_better else "below"
    text = f"{what}, paper: {rel.join(r[0] for r in paper)}; ours: {rel.join(r[0] for r in ours)}."
    flips = []
    for i, a in enumerate(paper):
        for b in paper[i + 1 :]:
            if a[3] == b[3]:
                continue
            # The paper ranks a before b; do we?
            if sign * a[1] > sign * b[1]:
                close = abs(a[1] - b[1]) <= max(a[2], b[2])
                note = " (within one std of each other)" if close else ""
                flips.append(f"{b[0]} {word} {a[0]} ({b[1]:.3g} vs {a[1]:.3g}){note}")
    if flips:
        text += " Where we differ from the paper: we measure " + "; ".join(flips) + "."
    else:
        text += " Same ordering as the paper."
    return text


# ---------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------


def _curve_stats(runs: list[dict[str, Any]], key: str, scale: float):
    """x, mean and std over seeds of one curve (None entries, e.g. no episode finished in an
    iteration, are left out); None when no run has the curve."""
    import numpy as np

    runs = [r for r in runs if "error" not in r and r["curve_x"] and r[key]]
    if not runs:
        return None
    n = min(len(r["curve_x"]) for r in runs)
    x = np.array(runs[0]["curve_x"][:n], dtype=float)
    y = np.array(
        [[np.nan if v is None else v * scale for v in r[key][:n]] for r in runs], dtype=float
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns stay NaN
        return x, np.nanmean(y, axis=0), np.nanstd(y, axis=0)


def plot_task(result: dict[str, Any], task: Any, out_dir: Path) -> list[Path]:
    """`<task>_curves.png` (metric and power during training, mean ± std over seeds, one
    column per variant) and `<task>_power.png` (final metric against inference power)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import EngFormatter

    variants = result["variants"]
    n = len(variants)
    scale = task.METRIC_SCALE
    curves_path = out_dir / f"{task.NAME}_curves.png"
    power_path = out_dir / f"{task.NAME}_power.png"

    # One colour per model (its row index) in every panel of both figures; one legend at the
    # right of each figure.
    width = 3.8 * n + 1.9
    fig, axes = plt.subplots(2, n, figsize=(width, 5.4), squeeze=False, sharex="col")
    for col, variant in enumerate(variants):
        top, bottom = axes[0][col], axes[1][col]
        for i, model in enumerate(variant["models"]):
            for ax, key, s in ((top, "curve_metric", scale), (bottom, "curve_power", 1.0)):
                stats = _curve_stats(model.get("runs", []), key, s)
                if stats is None:
                    continue
                x, mean, std = stats
                ax.plot(x, mean, label=model["spec"]["name"], lw=1.2, color=f"C{i}")
                ax.fill_between(x, mean - std, mean + std, color=f"C{i}", alpha=0.2)
        top.set_title(variant["settings"]["variant"], fontsize=9)
        top.set_ylabel(task.CURVE_METRIC, fontsize=8)
        bottom.set_ylabel(POWER_LABEL, fontsize=8)
        _log_axis(bottom, "y")  # baselines' power is often 10x the STPN's
        bottom.set_xlabel(task.CURVE_X, fontsize=8)
        bottom.xaxis.set_major_formatter(EngFormatter(sep=""))  # 200k rather than 200000
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=7)
    _finish(fig, axes[0][0], f"{task.TITLE}: training, mean ± std over seeds", width)
    fig.savefig(curves_path, dpi=72)
    plt.close(fig)

    fig, axes = plt.subplots(1, n, figsize=(width, 3.2), squeeze=False)
    for col, variant in enumerate(variants):
        ax = axes[0][col]
        for i, model in enumerate(variant["models"]):
            s = summarize_model(model, scale)
            if s["metric_mean"] is None or s["power_mean"] is None:
                continue
            ax.errorbar(
                s["power_mean"],
                s["metric_mean"],
                xerr=s["power_std"],
                yerr=s["metric_std"],
                fmt="o",
                capsize=3,
                color=f"C{i}",
                label=model["spec"]["name"],
            )
        ax.set_title(variant["settings"]["variant"], fontsize=9)
        ax.set_xlabel(f"inference {POWER_LABEL}", fontsize=8)
        _log_axis(ax, "x")
        ax.set_ylabel(task.METRIC, fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    _finish(fig, axes[0][0], f"{task.TITLE}: after training, mean ± std over seeds", width)
    fig.savefig(power_path, dpi=72)
    plt.close(fig)
    return [curves_path, power_path]


def _log_axis(ax: Any, which: str) -> None:
    """Log scale on `ax`'s `which` ("x" or "y") axis, ticks at 1, 2, 5 x 10^k labelled plainly."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    getattr(ax, f"set_{which}scale")("log")
    axis = getattr(ax, f"{which}axis")
    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _finish(fig: Any, ax: Any, title: str, width: float) -> None:
    """Title, and the legend of `ax`'s lines in a column at the right of the figure."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="center right", fontsize=7, frameon=False)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1 - 1.8 / width, 1))


# ---------------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------------


def _settings_line(settings: dict[str, Any]) -> str:
    return ", ".join(f"`{k}`={v}" for k, v in settings.items() if k != "variant")


def _seeds_line(result: dict[str, Any]) -> str:
    """ "0, 1, 2" when every model that ran has the same seeds, else the seeds per model."""
    ran = [
        (m["spec"]["name"], [r["seed"] for r in m["runs"]])
        for v in result["variants"]
        for m in v["models"]
        if m.get("runs")
    ]
    if len({tuple(seeds) for _, seeds in ran}) <= 1:
        return ", ".join(map(str, result["seeds"]))
    return "; ".join(f"{name} {', '.join(map(str, seeds))}" for name, seeds in ran)


def _wall_line(result: dict[str, Any]) -> str:
    parts = []
    for inv in result["invocations"]:
        load = inv.get("load", {})
        which = "all models" if inv.get("models") is None else ", ".join(inv["models"])
        parts.append(
            f"{inv['wall_seconds'] / 60:.1f} min on {inv['started'][:10]} ({which}; "
            f"1-min load average {load.get('mean', float('nan')):.1f}, "
            f"{load.get('min', float('nan')):.1f}-{load.get('max', float('nan')):.1f}, on "
            f"{inv.get('cpus', '?')} CPUs)"
        )
    return "; then ".join(parts)


def markdown_section(result: dict[str, Any], task: Any, images: list[str]) -> str:
    """The task's section of results.md (between its begin/end markers)."""
    scale = task.METRIC_SCALE
    lines = [
        BEGIN.format(task=task.NAME),
        f"## {task.TITLE}",
        "",
        f"Command: `{result['invocations'][0]['command']}`"
        + (" (quick smoke run, not a result)" if result.get("quick") else ""),
        "",
        f"Seeds: {_seeds_line(result)}. Wall time: {_wall_line(result)}.",
        "",
        task.notes(result["variants"][0]["settings"]),
        "",
    ]
    note = _converted_note(result)
    if note:
        lines += [note, ""]
    comparisons = []
    for variant in result["variants"]:
        settings = variant["settings"]
        if len(result["variants"]) > 1:
            lines += [f"### {settings['variant']}", ""]
        lines += [f"Budget: {_settings_line(settings)}.", ""]
        # A task may also put its metric on a scale of its own (the maze: random -> oracle).
        scale_of = getattr(task, "metric_scale", None)
        extra = scale_of(settings) if scale_of else None
        extra_title = f" {extra[0]} |" if extra else ""
        lines += [
            f"| model | core | H | params | {task.METRIC} |{extra_title} {POWER_LABEL} "
            "| s / seed | paper: metric | paper: power |",
            "|---|---|---|---|---|---|---|---|---|" + ("---|" if extra else ""),
        ]
        metric_rows, power_rows = [], []
        for model in variant["models"]:
            spec, s = model["spec"], summarize_model(model, scale)
            core = spec["core"] + (" (uniform)" if spec["plasticity"] == "uniform" else "")
            paper = (spec.get("paper_metric") or "–", spec.get("paper_power") or "–")
            if spec.get("unavailable"):
                ours = ("not available", "–", "–")
                hidden = params = "–"
            else:
                hidden, params = spec["hidden_size"], spec["params"]
                errors = [r for r in model.get("runs", []) if "error" in r]
                if s["metric_mean"] is None:
                    ours = ("failed" if errors else "not run", "–", "–")
                else:
                    ours = (
                        fmt(s["metric_mean"], s["metric_std"]),
                        fmt(s["power_mean"], s["power_std"]),
                        f"{s['seconds_per_seed']:.0f}",
                    )
                    pm = paper_mean(spec.get("paper_metric"))
                    metric_rows.append((spec["name"], s["metric_mean"], s["metric_std"], pm))
                    if s["power_mean"] is not None:
                        pp = paper_mean(spec.get("paper_power"))
                        power_rows.append((spec["name"], s["power_mean"], s["power_std"], pp))
            scaled = ""
            if extra:
                _, offset, span, _ = extra
                value = "–"
                if not spec.get("unavailable") and s["metric_mean"] is not None:
                    value = fmt((s["metric_mean"] - offset) / span, s["metric_std"] / span, 3)
                scaled = f" {value} |"
            lines.append(
                f"| {spec['name']} | {core} | {hidden} | {params} | {ours[0]} |{scaled} "
                f"{ours[1]} | {ours[2]} | {paper[0]} | {paper[1]} |"
            )
        if extra and extra[3] is not None:
            lines += ["", extra[3]]
        sources = sorted({m["spec"]["paper_source"] for m in variant["models"]} - {None})
        if sources:
            lines += ["", f"The paper's numbers: {'; '.join(sources)}."]
        unavailable = [m["spec"] for m in variant["models"] if m["spec"].get("unavailable")]
        if unavailable:
            names = ", ".join(f"{u['name']} (`{u['core']}`)" for u in unavailable)
            lines += ["", f"Not available in this checkout (core not registered): {names}."]
        lines.append("")
        prefix = f"{settings['variant']}: " if len(result["variants"]) > 1 else ""
        comparisons.append(
            prefix + compare_orderings(metric_rows, task.HIGHER_IS_BETTER, task.METRIC.capitalize())
        )
        if any(r[3] is not None for r in power_rows):
            comparisons.append(prefix + compare_orderings(power_rows, False, "Power"))
    lines += ["**Against the paper.**", "", *(f"- {c}" for c in comparisons), ""]
    lines += [f"![{Path(i).stem}]({i})" for i in images]
    lines += ["", END.format(task=task.NAME)]
    return "\n".join(lines)


def update_page(page: Path, task_name: str, section: str) -> None:
    """Write `section` into `page` in place of the task's old section; other tasks' sections
    are kept, in TASK_ORDER, under the page header."""
    old = page.read_text() if page.exists() else ""
    sections: dict[str, str] = {}
    for name in TASK_ORDER:
        begin, end = BEGIN.format(task=name), END.format(task=name)
        if begin in old and end in old:
            sections[name] = old[old.index(begin) : old.index(end) + len(end)]
    sections[task_name] = section
    body = [PAGE_HEADER.strip(), ""]
    for name in TASK_ORDER:
        if name in sections:
            body += [sections[name], ""]
        else:
            command = f"python -m benchmarks.reproduce --task {name}"
            body += [f"## {name} (not run yet)", "", f"Run `{command}`.", ""]
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text("\n".join(body))


def _finite(obj: Any) -> Any:
    """NaN and infinities as None (JSON has neither), recursively."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_finite(data), indent=1, allow_nan=False) + "\n")
