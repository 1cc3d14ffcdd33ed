"""The `rllib` command end to end (train file -> evaluate -> plot), its errors, and Tune sweeps."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rllib_stpn import cli
from rllib_stpn.experiments import POWER_KEY, RETURN_KEY

# A maze small enough that two 2-iteration trials (a grid over hidden_size) take seconds.
TINY = """\
maze-tiny:
  run: A2C
  env: stpn/Maze-v0
  stop:
    training_iteration: 5
  config:
    env_config: {size: 5, episode_length: 10}
    num_env_runners: 0
    num_envs_per_env_runner: 4
    rollout_fragment_length: 10
    gamma: 0.9
    model:
      custom_model: stpn
      max_seq_len: 10
      custom_model_config:
        core: stpn
        hidden_size: {grid_search: [4, 8]}
"""


def _rllib(
    *args: str, timeout: float = 240, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a fresh local Ray
    return subprocess.run(
        [sys.executable, "-m", "rllib_stpn", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=cwd,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One `rllib train file` run: returns (experiment dir, completed process)."""
    root = tmp_path_factory.mktemp("cli")
    spec = root / "tiny.yaml"
    spec.write_text(TINY)
    proc = _rllib(  # relative paths, as a user types them
        "train",
        "file",
        "tiny.yaml",
        "--storage-path",
        "results",
        "--stop",
        '{"training_iteration": 2}',
        "--checkpoint-freq",
        "1",
        "--num-cpus",
        "2",
        cwd=root,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "results" / "maze-tiny", proc


def _trials(run_dir: Path) -> list[Path]:
    return sorted(p for p in run_dir.iterdir() if (p / "progress.csv").is_file())


def test_train_file_writes_tune_results(trained):
    run_dir, proc = trained
    trials = _trials(run_dir)
    assert len(trials) == 2  # one per grid point
    for trial in trials:
        with open(trial / "progress.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == 2  # --stop replaced the file's 5 iterations
        assert RETURN_KEY in rows[0] and POWER_KEY in rows[0]
        power = [float(r[POWER_KEY]) for r in rows]
        assert all(math.isfinite(p) and p > 0 for p in power)
        assert (trial / "result.json").is_file()
        assert list(trial.glob("events.out.tfevents.*")), "no TensorBoard event file"
        # --checkpoint-freq 1: one per iteration, the last one at the end.
        assert sorted(p.name for p in trial.glob("checkpoint_*")) == [
            "checkpoint_000000",
            "checkpoint_000001",
        ]
    # The progress table and the closing summary name the metrics.
    assert "return" in proc.stdout and "power" in proc.stdout
    assert "hidden_size" in proc.stdout


def test_evaluate_checkpoint(trained, tmp_path):
    run_dir, _ = trained
    trial = _trials(run_dir)[0]
    out = tmp_path / "eval.json"
    relative = trial.relative_to(run_dir.parent) / "checkpoint_000001"
    proc = _rllib(
        "evaluate", str(relative), "--episodes", "3", "--out", str(out), cwd=run_dir.parent
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "synaptic power / step" in proc.stdout
    result = json.loads(out.read_text())
    assert result["episodes"] == 3 and result["explore"] is True
    assert result["episode_lengths"] == [10, 10, 10]
    assert math.isfinite(result["return_mean"]) and result["return_std"] >= 0
    assert result["synaptic_power_mean"] > 0 and result["synaptic_power_std"] >= 0


def test_evaluate_uses_the_trained_weights(trained, ray_session):
    import torch
    from ray.rllib.core.rl_module.rl_module import RLModule

    from rllib_stpn.evaluate import _load_algorithm, find_checkpoint

    run_dir, _ = trained
    ckpt = find_checkpoint(_trials(run_dir)[1])  # a trial dir resolves to its newest checkpoint
    assert ckpt.name == "checkpoint_000001"
    saved = RLModule.from_checkpoint(ckpt / "learner_group/learner/rl_module/default_policy")
    algo = _load_algorithm(ckpt, seed=0)
    try:
        runner_state = algo.env_runner.module.get_state()
        for name, value in saved.get_state().items():
            assert torch.equal(torch.as_tensor(runner_state[name]), torch.as_tensor(value)), name
    finally:
        algo.stop()


def test_plot_writes_pngs(trained, tmp_path, capsys):
    # In-process (the same `main` the console script runs): saves a Python start-up.
    run_dir, _ = trained
    assert cli.main(["plot", str(run_dir), "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().out.count("wrote ") == 3
    for name in ("return_vs_steps.png", "power_vs_steps.png", "power_vs_return.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name


def test_plot_reads_both_trials(trained):
    from rllib_stpn.plot import find_trials, read_progress

    run_dir, _ = trained
    trials = find_trials([run_dir])
    assert len(trials) == 2
    series = read_progress(trials[0])
    assert series["steps"] == [40.0, 80.0]  # 4 envs x 10 steps per iteration
    assert all(p > 0 for p in series["power"])


# ----------------------------------------------------------------------------------- errors

BAD_FILES = {
    "invalid.yaml": ("exp:\n  run: A2C\n  env: [unclosed\n", "invalid YAML"),
    "badrun.yaml": (TINY.replace("run: A2C", "run: A3C"), "unknown run 'A3C'"),
    "badenv.yaml": (TINY.replace("stpn/Maze-v0", "stpn/Mase-v0"), "unknown env 'stpn/Mase-v0'"),
    "badmodel.yaml": (TINY.replace("core: stpn", "cores: stpn"), "custom_model_config key 'cores'"),
    "badcore.yaml": (TINY.replace("core: stpn", "core: gru"), "'gru'"),
    "badkey.yaml": (TINY.replace("gamma:", "gama:"), "unknown config key 'gama'"),
    "badenvcfg.yaml": (TINY.replace("size: 5", "size: 6"), "size"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_file_exits_2_with_one_line(name, tmp_path, capsys):
    text, message = BAD_FILES[name]
    (tmp_path / name).write_text(text)
    storage = tmp_path / "results"
    rc = cli.main(["train", "file", str(tmp_path / name), "--storage-path", str(storage)])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("rllib: error: ") and message in err, err
    assert not storage.exists()  # nothing half-written


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "file", "missing.yaml"], "experiment file not found"),
        (["train", "file", "{spec}", "--stop", "{x"], "--stop is not valid JSON"),
        (["train", "file", "{spec}", "--config", "[1, 2]"], "--config must be a JSON object"),
        (["train", "file", "{spec}", "--config", '{"lr": -1}'], "lr"),
        (["train", "file", "{spec}", "--num-samples", "0"], "--num-samples"),
        (["train", "file"], "required: file"),
        (["train"], "required"),
        (["evaluate", "no/such/checkpoint"], "checkpoint not found"),
        (["evaluate", "{dir}"], "no RLlib checkpoint"),
        (["plot", "{dir}"], "no progress.csv"),
        (["fly"], "invalid choice"),
    ],
)
def test_bad_options_exit_2_with_one_line(args, message, tmp_path, capsys):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY)
    args = [a.replace("{spec}", str(spec)).replace("{dir}", str(tmp_path)) for a in args]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_error_in_a_fresh_process_is_one_line(tmp_path):
    """No warning or traceback from the imports sneaks onto stderr."""
    (tmp_path / "f.yaml").write_text(TINY.replace("stpn/Maze-v0", "NoSuchEnv-v0"))
    proc = _rllib("train", "file", str(tmp_path / "f.yaml"), timeout=120)
    assert proc.returncode == 2
    assert proc.stderr == "rllib: error: unknown env 'NoSuchEnv-v0'\n"
    assert proc.stdout == ""


# ------------------------------------------------------------------------------ Python API


def test_tune_run_sweep_from_python(ray_session, tmp_path):
    """Two trials (a grid over STPN's hidden size) through tune.run, as README shows."""
    from ray import tune
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    from rllib_stpn import A2CConfig, STPNModel, SynapticPowerCallback

    config = (
        A2CConfig()
        .environment("stpn/Maze-v0", env_config={"size": 5, "episode_length": 10})
        .env_runners(num_env_runners=0, num_envs_per_env_runner=4, rollout_fragment_length=10)
        .training(gamma=0.9, lr=1e-3)
        .rl_module(
            rl_module_spec=RLModuleSpec(module_class=STPNModel),
            model_config={"hidden_size": tune.grid_search([4, 8]), "max_seq_len": 10},
        )
        .callbacks(SynapticPowerCallback)
    )
    analysis = tune.run(
        "A2C",
        config=config,
        stop={"training_iteration": 1},
        storage_path=str(tmp_path),
        name="sweep",
        verbose=0,
    )
    assert len(analysis.trials) == 2
    assert all(t.status == "TERMINATED" for t in analysis.trials)
    sizes = sorted(t.config["_model_config"]["hidden_size"] for t in analysis.trials)
    assert sizes == [4, 8]
    for trial in analysis.trials:
        assert trial.last_result["env_runners"]["synaptic_power_mean"] > 0
