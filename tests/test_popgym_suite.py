"""benchmarks/popgym_suite.py end to end on a tiny budget: per-seed JSON, resume, the page."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import popgym_report, popgym_suite

pytest.importorskip("popgym")


def test_bad_arguments_are_one_line(capsys):
    cases = [
        (["--envs", "RepeatPreviousEasy,Nope"], "--envs got ['Nope']; allowed:"),
        (["--cores", "gru,transformer"], "--cores got ['transformer']; allowed:"),
        (["--budget", "0"], "--budget must be a positive number, got '0'"),
        (["--seeds", "x"], "--seeds must be a positive integer, got 'x'"),
        (["--address", " "], "--address must name a Ray cluster"),
    ]
    for argv, message in cases:
        assert popgym_suite.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("popgym_suite: error: ") and message in err
        assert err.count("\n") == 1


def test_a_page_without_runs_is_one_line(tmp_path, capsys):
    assert popgym_suite.main(["--report-only", "--out", str(tmp_path / "typo")]) == 2
    err = capsys.readouterr().err
    assert err == f"popgym_suite: error: no run JSON under {tmp_path / 'typo' / 'runs'} " + (
        "(the suite's --out directory)\n"
    )
    assert not (tmp_path / "typo.md").exists()


def test_an_address_where_nothing_listens_is_one_line(capsys):
    with socket.socket() as sock:  # a port that was free a moment ago
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    argv = ["--address", f"127.0.0.1:{port}", "--envs", "RepeatPreviousEasy", "--cores", "mlp"]
    assert popgym_suite.main(argv + ["--out", "/nonexistent/popgym"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"popgym_suite: error: --address '127.0.0.1:{port}': nothing answers")
    assert err.count("\n") == 1


@pytest.mark.parametrize("text", ['{"seed": 0, "sett', "[1, 2]"])  # cut short; not a run's
def test_an_unreadable_run_json_is_kept_and_named(tmp_path, capsys, text):
    path = popgym_suite.run_path(tmp_path, "RepeatPreviousEasy", "mlp", 0)
    path.parent.mkdir(parents=True)
    path.write_text(text)
    line = popgym_suite.run_one(str(tmp_path), "RepeatPreviousEasy", "mlp", 0, 1.0)
    assert line.startswith("RepeatPreviousEasy mlp seed 0: FAILED ValueError: ")
    assert f"{path} is not a run's JSON" in line and "move it away to rerun" in line
    # The page after the runs names the file in one line instead of a traceback.
    argv = ["--envs", "RepeatPreviousEasy", "--cores", "mlp", "--seeds", "1", "--jobs", "1"]
    assert popgym_suite.main(argv + ["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"popgym_suite: error: {path} is not a run's JSON")
    assert err.count("\n") == 1
    assert path.read_text() == text


def test_normalisation_uses_each_families_return_range():
    assert popgym_report.normalise("RepeatPreviousEasy", -1.0) == 0.0
    assert popgym_report.normalise("CountRecallHard", 0.0) == 0.5
    assert popgym_report.normalise("PositionOnlyCartPoleEasy", 0.25) == 0.25
    assert popgym_report.normalise("MineSweeperEasy", 0.0) is None  # range not read yet


def test_tiny_suite_writes_json_and_page_and_resumes(ray_session, tmp_path, monkeypatch, capsys):
    # Two 100-step iterations a run (one process: the patched settings stay in effect).
    monkeypatch.setitem(popgym_suite.PPO, "train_batch", 100)
    monkeypatch.setitem(popgym_suite.PPO, "minibatch", 50)
    monkeypatch.setitem(popgym_suite.PPO, "num_epochs", 1)
    monkeypatch.setitem(popgym_suite.PPO, "num_envs", 2)
    monkeypatch.setitem(popgym_suite.PPO, "max_seq_len", 20)
    out = tmp_path / "popgym"
    argv = ["--envs", "RepeatPreviousEasy", "--cores", "gru,mlp", "--seeds", "1"]
    argv += ["--budget", str(200 / 150_000), "--jobs", "1", "--out", str(out)]
    assert popgym_suite.main(argv) == 0
    runs = {}
    for core in ("gru", "mlp"):
        run = json.loads((out / "runs" / "RepeatPreviousEasy" / core / "seed0.json").read_text())
        s = run["settings"]
        assert (s["core"], s["iterations"], s["env_steps"]) == (core, 2, 200)
        assert run["curve"]["env_steps"] == [100, 200]
        # A random policy scores -0.5 on RepeatPrevious (1 suit in 4 right): a return in range.
        assert -1.0 <= run["max_mean_return"] <= 1.0 and run["wall_s"] > 0
        runs[core] = run
    # The two cores have the same parameter count to within a few percent.
    p = [runs[c]["settings"]["core_and_head_params"] for c in ("gru", "mlp")]
    assert abs(p[0] - p[1]) / p[0] < 0.03
    page = (tmp_path / "popgym.md").read_text()
    assert "PILOT, not the benchmark" in page and "python -m benchmarks.popgym_suite" in page
    score = popgym_report.normalise("RepeatPreviousEasy", runs["gru"]["max_mean_return"])
    assert f"| gru | {runs['gru']['settings']['hidden_size']} | {score:.3f} |" in page
    assert "(popgym/runs/RepeatPreviousEasy/mlp/seed0.json)" in page
    # Same settings again: nothing is retrained.
    capsys.readouterr()
    assert popgym_suite.main(argv) == 0
    assert capsys.readouterr().out.count("done already") == 2


def test_runs_as_ray_tasks_on_a_cluster(tmp_path):
    # `--address local`: a fresh Ray cluster for a process of its own; without --jobs every run
    # is a 1-CPU task at once, benchmarks/ shipped to the workers, the JSON written here.
    out = tmp_path / "popgym"
    argv = ["--address", "local", "--envs", "RepeatPreviousEasy", "--cores", "mlp"]
    argv += ["--seeds", "2", "--budget", str(2000 / 150_000), "--out", str(out)]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.popgym_suite", *argv],
        cwd=Path(popgym_suite.__file__).parents[1],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 runs, as many as the cluster's CPUs take at a time" in proc.stdout
    assert proc.stdout.count(": final return ") == 2
    for seed in (0, 1):
        run = json.loads(popgym_suite.run_path(out, "RepeatPreviousEasy", "mlp", seed).read_text())
        assert run["seed"] == seed and run["curve"]["env_steps"] == [2000]
        assert -1.0 <= run["max_mean_return"] <= 1.0
    assert (tmp_path / "popgym.md").exists()


def test_a_failed_ray_task_is_reported_and_the_others_go_on(ray_session, tmp_path, monkeypatch):
    good = popgym_suite.settings_for

    def settings(task, core, budget):  # the second run fails inside its Ray task
        return (
            dict(good(task, core, budget), core="nope")
            if core == "rnn"
            else good(task, "mlp", 0.001)
        )

    monkeypatch.setattr(popgym_suite, "settings_for", settings)
    monkeypatch.setitem(popgym_suite.PPO, "train_batch", 100)
    monkeypatch.setitem(popgym_suite.PPO, "minibatch", 50)
    monkeypatch.setitem(popgym_suite.PPO, "num_epochs", 1)
    calls = [(str(tmp_path), "RepeatPreviousEasy", c, 0, 1.0) for c in ("mlp", "rnn")]
    calls.append((str(tmp_path), "NoSuchTask", "mlp", 0, 1.0))  # fails here, on the driver
    lines = sorted(popgym_suite.run_on_ray(calls, jobs=2))
    assert len(lines) == 3
    assert lines[0].startswith("NoSuchTask mlp seed 0: FAILED ")
    assert lines[1].startswith("RepeatPreviousEasy mlp seed 0: final return ")
    assert lines[2].startswith("RepeatPreviousEasy rnn seed 0: FAILED ") and "nope" in lines[2]
    assert popgym_suite.run_path(tmp_path, "RepeatPreviousEasy", "mlp", 0).exists()
    assert not popgym_suite.run_path(tmp_path, "RepeatPreviousEasy", "rnn", 0).exists()


def _fake_run(out, task: str, core: str, seed: int, best: float) -> None:
    """A full-budget run's JSON as the suite writes it, without training."""
    settings = {"task": task, "core": core, "budget": 1.0, "env_steps": 150_000}
    settings |= {"hidden_size": 64, "core_and_head_params": 25_000}
    run = {
        "seed": seed,
        "settings": settings,
        "curve": {"env_steps": [75_000, 150_000], "return_mean": [best - 0.1, best]},
        "final_return": best,
        "max_mean_return": best,
        "wall_s": 100.0,
    }
    path = popgym_suite.run_path(out, task, core, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(run))


def test_page_of_a_suite_under_way_marks_what_is_missing(tmp_path):
    # gru: every env, 3 seeds; stpn: every env, seed 0 only; lstm: one env. 6*3 + 6 + 1 runs.
    out = tmp_path / "popgym"
    for task in popgym_suite.SUITE_ENVS:
        for seed in range(3):
            _fake_run(out, task, "gru", seed, 0.0)
        _fake_run(out, task, "stpn", 0, 0.5)
    _fake_run(out, "RepeatFirstEasy", "lstm", 0, 1.0)
    (out / "curves_MineSweeperEasy.png").write_bytes(b"")  # from an earlier run's env set
    page = popgym_report.write_report(out).read_text()
    pytest.importorskip("matplotlib")
    curves = sorted(p.name for p in out.glob("curves_*.png"))
    assert curves == sorted(f"curves_{t}.png" for t in popgym_suite.SUITE_ENVS)
    total = len(popgym_suite.SUITE_ENVS) * len(popgym_suite.SUITE_CORES) * 3
    assert f"IN PROGRESS: 25 of {total} runs of the full suite." in page
    assert "PILOT" not in page
    table = page.split("## Normalised max-mean return per env, and MMER")[1].split("\n## ")[0]
    rows = {line.split(" | ")[0][2:]: line for line in table.splitlines() if line.startswith("| ")}
    # A return of 0 is 0.5 in the [-1, 1] ranges and 0 in the cartpole's [0, 1].
    mmer = sum(popgym_report.normalise(t, 0.0) for t in popgym_suite.SUITE_ENVS) / 6
    assert "(1 seed)" not in rows["gru"] and rows["gru"].endswith(f"| **{mmer:.3f}** |")
    assert rows["stpn"].count("(1 seed)") == 6 and "| – |" not in rows["stpn"]
    assert rows["lstm"].endswith("| – |") and "1.000 (1 seed)" in rows["lstm"]
