"""docs/popgym.md from the per-seed JSON of `benchmarks.popgym_suite`.

    python -m benchmarks.popgym_report [DIR]     # DIR: the suite's --out (default docs/popgym)

Normalised return and MMER follow POPGym's protocol (Morad et al., ICLR 2023): the max-mean
episodic return of a run is the highest mean episodic return over its training iterations;
it is normalised to [0, 1] with the env's episodic return range (RETURN_RANGE, read from the
POPGym 1.0.7 sources); a core's MMER is the mean of its normalised scores over the envs.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

# Episodic return range of each family, from POPGym 1.0.7's reward scales: the diagnostic
# tasks give ±1/n on each of their n scored steps; the pendulums rescale gymnasium's per-step
# reward from [-16.27, 0] to [-1/L, 1/L] over L steps; the cartpoles give 1/L per step survived.
RETURN_RANGE: dict[str, tuple[float, float]] = {
    "RepeatPrevious": (-1.0, 1.0),
    "RepeatFirst": (-1.0, 1.0),
    "CountRecall": (-1.0, 1.0),
    "Autoencode": (-1.0, 1.0),
    "PositionOnlyPendulum": (-1.0, 1.0),
    "NoisyPositionOnlyPendulum": (-1.0, 1.0),
    "PositionOnlyCartPole": (0.0, 1.0),
    "NoisyPositionOnlyCartPole": (0.0, 1.0),
    "VelocityOnlyCartPole": (0.0, 1.0),
}
COMMAND = "python -m benchmarks.popgym_suite"


def family(task: str) -> str:
    for level in ("Easy", "Medium", "Hard"):
        if task.endswith(level):
            return task.removesuffix(level)
    return task


def normalise(task: str, value: float) -> float | None:
    """(value - low) / (high - low) for the env's return range; None for an unknown family."""
    bounds = RETURN_RANGE.get(family(task))
    if bounds is None:
        return None
    low, high = bounds
    return (value - low) / (high - low)


def read_run(path: Path) -> dict[str, Any]:
    """One run's JSON; a file that is not one is a one-line ValueError naming it (it is kept)."""
    try:
        run = json.loads(path.read_text())
        if not isinstance(run, dict) or not isinstance(run.get("settings"), dict):
            raise ValueError("no settings")
    except ValueError as err:
        raise ValueError(f"{path} is not a run's JSON ({err}); move it away to rerun") from None
    return run


def load_runs(out: Path) -> list[dict[str, Any]]:
    runs = []
    for path in sorted((out / "runs").glob("*/*/seed*.json")):
        run = read_run(path)
        run["path"] = path
        runs.append(run)
    return runs


def _mean_std(values: list[float]) -> tuple[float, float] | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return statistics.fmean(values), statistics.pstdev(values)


def _fmt(ms: tuple[float, float] | None, n: int) -> str:
    if ms is None:
        return "–"
    return f"{ms[0]:.3f}" if n == 1 else f"{ms[0]:.3f} ± {ms[1]:.3f}"


def plot_curves(out: Path, by_env: dict[str, dict[str, list[dict]]]) -> dict[str, str]:
    """One PNG per env (mean training return per core over its seeds); {} without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {}
    files = {}
    for task, by_core in sorted(by_env.items()):
        fig, ax = plt.subplots(figsize=(6, 3.6))
        for core, runs in sorted(by_core.items()):
            curves = [r["curve"] for r in runs]
            n = min(len(c["env_steps"]) for c in curves)
            xs = curves[0]["env_steps"][:n]
            ys = []
            for i in range(n):
                vals = [c["return_mean"][i] for c in curves if c["return_mean"][i] is not None]
                ys.append(statistics.fmean(vals) if vals else float("nan"))
            ax.plot(xs, ys, label=core, lw=1.2)
        ax.set_title(f"{task} (mean over seeds)")
        ax.set_xlabel("env steps")
        ax.set_ylabel("mean episodic return")
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        name = f"curves_{task}.png"
        fig.savefig(out / name, dpi=90)
        plt.close(fig)
        files[task] = name
    for stale in set(out.glob("curves_*.png")) - {out / f for f in files.values()}:
        stale.unlink()  # an env no longer among the runs
    return files


def write_report(out: Path, page: Path | None = None) -> Path:
    """Write the page (default: `<out>.md`, i.e. docs/popgym.md) and the curve PNGs."""
    from benchmarks.popgym_suite import DEFAULT_SEEDS, SUITE_ENVS

    out = Path(out)
    page = page or out.with_suffix(".md")
    runs = load_runs(out)
    if not runs:  # a mistyped directory must not become an empty page
        raise ValueError(f"no run JSON under {out / 'runs'} (the suite's --out directory)")
    by_env: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        by_env[r["settings"]["task"]][r["settings"]["core"]].append(r)
    envs = sorted(by_env)
    cores = sorted({c for e in by_env.values() for c in e}, key=_core_order)
    seeds = sorted({r["seed"] for r in runs})
    budgets = sorted({r["settings"]["budget"] for r in runs})
    steps = sorted({r["settings"]["env_steps"] for r in runs})
    missing = _missing(runs) if budgets == [1.0] else None

    curves = plot_curves(out, by_env)
    rel = out.relative_to(page.parent) if out.is_relative_to(page.parent) else out
    L: list[str] = ["# POPGym: every memory core on RLlib's new API stack", ""]
    if missing is None:
        L += [
            "> **PILOT, not the benchmark.** These numbers come from a tiny run that proves the "
            f"pipeline end to end ({len(envs)} env(s) x {len(cores)} core(s) x {len(seeds)} "
            f"seed(s), {', '.join(f'{s:,}' for s in steps)} env steps a run). They say nothing "
            "about which core is better. The full suite (6 envs x 11 cores x 3 seeds, "
            "150,000 env steps a run) is to be run with:",
            ">",
            f">     {COMMAND}",
            ">",
            "> and this page is then rewritten from its JSON. Its run time on this machine: see "
            "the throughput sections below (`--budget`, `--cores` and `--jobs` trade it off).",
            "",
        ]
    elif missing:
        short = sorted({c for _, c, _ in missing}, key=_core_order)
        L += [
            f"> **IN PROGRESS: {len(runs)} of {len(runs) + len(missing)} runs of the full "
            "suite.** Every number below is measured, but the runs of "
            f"{', '.join(short)} are not all done: a cell marked (n seed) has fewer than "
            f"{DEFAULT_SEEDS} seeds and a row without all six envs has no MMER. The same "
            "command resumes the suite (finished runs are skipped) and rewrites this page:",
            ">",
            f">     {COMMAND}",
            "",
        ]
    L += _protocol(steps)
    L += ["## Normalised max-mean return per env, and MMER", ""]
    L += [
        "Each cell: the run's highest mean episodic return over its training iterations, "
        "normalised to [0, 1] with the env's return range, mean ± std over seeds "
        f"({len(seeds)} seed(s): {', '.join(map(str, seeds))}). MMER: the mean over the envs "
        "of the row. Higher is better.",
        "",
    ]
    L += ["| core | H | " + " | ".join(envs) + " | MMER |", "|---" * (len(envs) + 3) + "|"]
    for core in cores:
        cells, per_env = [], []
        sizes = {by_env[e][core][0]["settings"]["hidden_size"] for e in envs if by_env[e][core]}
        for e in envs:
            vals = [
                normalise(e, r["max_mean_return"])
                for r in by_env[e][core]
                if r["max_mean_return"] is not None
            ]
            ms = _mean_std(vals)
            few = f" ({len(vals)} seed)" if 0 < len(vals) < len(seeds) else ""
            cells.append(_fmt(ms, len(vals)) + few)
            per_env.append(ms[0] if ms else None)
        # In a suite under way a row needs a run in every env of the suite; a pilot, in those
        # it ran.
        complete = missing is None or all(by_env.get(e, {}).get(core) for e in SUITE_ENVS)
        mmer = statistics.fmean(per_env) if complete and None not in per_env else None
        h = "/".join(str(s) for s in sorted(sizes))
        mm = "–" if mmer is None else f"**{mmer:.3f}**"
        L.append(f"| {core} | {h} | " + " | ".join(cells) + f" | {mm} |")
    L += ["", "## Final return (raw, not normalised) and wall time", ""]
    L += [
        "Final return: the mean episodic return over the last tenth of the training "
        "iterations. Wall time: seconds per run (build, training, shutdown), mean over "
        "seeds, with the runs sharing this 2-core machine as the suite ran them.",
        "",
    ]
    L += ["| env | core | params (core + heads) | final return | wall s |", "|---|---|---|---|---|"]
    for e in envs:
        for core in cores:
            rs = by_env[e][core]
            if not rs:
                continue
            final = _mean_std([r["final_return"] for r in rs])
            wall = statistics.fmean(r["wall_s"] for r in rs)
            params = rs[0]["settings"]["core_and_head_params"]
            L.append(f"| {e} | {core} | {params:,} | {_fmt(final, len(rs))} | {wall:.0f} |")
    total = sum(r["wall_s"] for r in runs)
    L += [
        "",
        f"Sum of the run wall times: {total:,.0f} s over {len(runs)} run(s), "
        f"{total / 2 / 3600:.1f} h of wall-clock time at 2 runs at a time (`--jobs 2`).",
        "",
    ]
    if runs:
        L += _throughput(runs, "## Throughput of these runs")
    extra = load_runs(out / "throughput")
    if extra:
        budget = ", ".join(sorted({f"{r['settings']['env_steps']:,}" for r in extra}))
        envs_t = ", ".join(sorted({r["settings"]["task"] for r in extra}))
        L += _throughput(
            extra,
            "## Throughput of every core (a separate short run)\n\n"
            f"From {len(extra)} runs of {budget} env steps on {envs_t} under "
            f"[{rel}/throughput/runs]({rel}/throughput/runs), one seed, 2 jobs at a time; "
            "their returns are not scored.",
        )
    if curves:
        L += ["## Training curves", ""]
        L += [f"![{e}]({rel}/{curves[e]})" for e in envs if e in curves]
        L.append("")
    L += ["## Per-seed JSON", ""]
    for r in runs:
        p = r["path"]
        p = p.relative_to(page.parent) if p.is_relative_to(page.parent) else p
        s = r["settings"]
        L.append(f"- [{s['task']} / {s['core']} / seed {r['seed']}]({p})")
    L += [""] + _published()
    page.write_text("\n".join(L) + "\n")
    return page


def _missing(runs: list[dict[str, Any]]) -> list[tuple[str, str, int]]:
    """(env, core, seed) of the full suite that has no budget-1 run here yet."""
    from benchmarks.popgym_suite import DEFAULT_SEEDS, SUITE_CORES, SUITE_ENVS

    have = {(r["settings"]["task"], r["settings"]["core"], r["seed"]) for r in runs}
    return [
        (e, c, k)
        for e in SUITE_ENVS
        for c in SUITE_CORES
        for k in range(DEFAULT_SEEDS)
        if (e, c, k) not in have
    ]


def _throughput(runs: list[dict[str, Any]], title: str) -> list[str]:
    """Env steps per wall second per core (set-up included) and the full suite's run time at
    those rates, for the cores these runs measured."""
    from benchmarks.popgym_suite import DEFAULT_SEEDS, STEPS_PER_BUDGET, SUITE_ENVS

    cores = sorted({r["settings"]["core"] for r in runs}, key=_core_order)
    L = [
        title,
        "",
        "| core | env steps / s | full suite, this core (h of run time) |",
        "|---|---|---|",
    ]
    total = 0.0
    for c in cores:
        mine = [r for r in runs if r["settings"]["core"] == c]
        rate = sum(r["settings"]["env_steps"] for r in mine) / sum(r["wall_s"] for r in mine)
        hours = STEPS_PER_BUDGET * len(SUITE_ENVS) * DEFAULT_SEEDS / rate / 3600
        total += hours
        L.append(f"| {c} | {rate:,.0f} | {hours:.1f} |")
    loads = [r["load_1min_end"] for r in runs if "load_1min_end" in r]
    load = (
        f"1-minute load average at the runs' ends: {min(loads):.1f} to {max(loads):.1f}"
        if loads
        else "machine load not recorded"
    )
    L += [
        "",
        f"At these rates the full suite's runs of these {len(cores)} core(s) take {total:.1f} h "
        "of run time, divided by the parallel `--jobs` (2 on this machine) if nothing else "
        f"runs ({load}; on a 2-core machine a load above 2 slows every run).",
        "",
    ]
    return L


def _core_order(core: str) -> int:
    from benchmarks.popgym_suite import SUITE_CORES

    return SUITE_CORES.index(core) if core in SUITE_CORES else len(SUITE_CORES)


def _protocol(steps: list[int]) -> list[str]:
    from benchmarks.popgym_suite import ANCHOR_CORE, ANCHOR_HIDDEN, ENCODER_HIDDENS, PPO

    p = PPO
    ranges = ", ".join(f"{k} [{lo:g}, {hi:g}]" for k, (lo, hi) in RETURN_RANGE.items())
    return [
        "POPGym (Morad et al., ICLR 2023) is the common yardstick for memory in RL. Its own "
        "baselines are pinned to Ray 2.3's old API stack; here the envs run through "
        "`popgym/<Task>-v0` ids (`pip install 'rllib-stpn[popgym]'`, popgym 1.0.7) and every "
        "memory core of this package trains with RLlib's new-stack PPO.",
        "",
        "```python",
        "import gymnasium as gym",
        "import rllib_stpn.envs  # registers the ids (rllib_stpn.register() also does, for Tune)",
        "",
        'env = gym.make("popgym/RepeatPreviousEasy-v0")  # or previous_action=False',
        "```",
        "",
        "In YAML: `env: popgym/RepeatPreviousEasy-v0` (tuned_examples/popgym-ppo-*.yaml, "
        "`rllib train file tuned_examples/popgym-ppo-stpn.yaml`). All 48 ids of POPGym 1.0.7 "
        "are registered; the six Labyrinth ones also need `pip install 'popgym[navigation]'`.",
        "",
        "## Protocol",
        "",
        "- **Observations** (rllib_stpn/envs/popgym.py): the task is unchanged. As in "
        "POPGym's baselines (`Antialias(PreviousAction(env))` in popgym/baselines/ppo.py) the "
        "previous action and a first-step flag are appended to the observation; every part "
        "is flattened into one float vector, categorical parts one-hot.",
        f"- **Model**: an MLP encoder ({ENCODER_HIDDENS}, ReLU), the memory core, linear "
        "policy and value heads. **Equal parameters**: every core is sized (hidden size H, "
        "per env since the heads depend on the action count) to the parameter count of the "
        f"core and heads of `{ANCHOR_CORE}` with H={ANCHOR_HIDDEN} "
        "(`core_hidden_size_for_params`); the encoder is the same for all.",
        f"- **PPO**: {p['train_batch']} steps a batch from {p['num_envs']} envs, "
        f"{p['num_epochs']} epochs of minibatch {p['minibatch']}, lr {p['lr']}, gamma "
        f"{p['gamma']} and value-loss weight {p['vf_loss_coeff']} (POPGym's), GAE lambda "
        f"{p['lambda']}, clip {p['clip_param']}, entropy {p['entropy_coeff']}, BPTT chunks of "
        f"{p['max_seq_len']} steps. Mean episodic return per iteration: RLlib's running mean "
        f"over the last {p['smoothing_episodes']} episodes.",
        f"- **Budget**: {', '.join(f'{s:,}' for s in steps)} env steps a run "
        "(`--budget` scales it; `--address auto` runs the suite on a Ray cluster, one "
        "1-CPU task a run). POPGym's baseline script trains every run for 15M env steps "
        "(the `POPGYM_STEPS` default in popgym/baselines/ppo.py), 100x the full suite's "
        "150,000: our numbers are early-training numbers and are not expected to reach theirs.",
        "- **Normalisation and MMER**: a run's max-mean episodic return (the highest mean "
        "episodic return over its training iterations, POPGym's MMER per run) is mapped to "
        f"[0, 1] by the env's return range, read from POPGym 1.0.7's reward scales ({ranges}); "
        "a core's MMER is the mean of its normalised scores over the envs. This follows the "
        "metric's name and POPGym's code; the paper's own wording could not be checked from "
        "this machine.",
        "",
    ]


def _published() -> list[str]:
    return [
        "## POPGym's published numbers",
        "",
        "Not shown beside ours. POPGym's baseline script (popgym/baselines/ppo.py) trains "
        "15M env steps a run with a 256-unit memory and 128-unit MLPs; the suite here trains "
        "150,000 steps (1% of that) at about 25k core parameters, so no cell is comparable, "
        "and the paper's per-env results could not be read and checked from this machine. "
        "To compare, put POPGym's published GRU and LSTM results for these six Easy envs "
        "beside ours and state this budget difference with them.",
        "",
    ]


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "popgym"
    try:
        print(f"wrote {write_report(target)}")
    except ValueError as err:
        print(f"popgym_report: error: {err}", file=sys.stderr)
        sys.exit(2)
