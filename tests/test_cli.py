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
from rllib_stpn.metrics import POWER_KEY, RETURN_KEY

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


@pytest.fixture
def no_ray_start(monkeypatch):
    """These errors must be found before Ray starts; a missed one fails here instead of
    starting Tune in the test process (where some would wait forever)."""
    monkeypatch.setattr(cli, "_init_ray", lambda *a, **kw: pytest.fail("Ray was started"))


def _trials(run_dir: Path) -> list[Path]:
    return sorted(p for p in run_dir.iterdir() if (p / "progress.csv").is_file())


def test_train_file_writes_tune_results(trained):
    run_dir, proc = trained
    trials = _trials(run_dir)
    assert len(trials) == 2  # one per grid point
    for trial in trials:
        # Named by the core, not by the env's "stpn/" namespace (Tune names a trial while
        # its config still holds reference placeholders).
        assert trial.name.startswith("A2C_stpn_Maze-v0_"), trial.name
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

HIDDEN_GRID_WITH_A_BAD_POINT = json.dumps(
    {"model": {"custom_model_config": {"hidden_size": {"grid_search": [16, -1]}}}}
)

BAD_FILES = {
    "invalid.yaml": ("exp:\n  run: A2C\n  env: [unclosed\n", "invalid YAML"),
    "badrun.yaml": (TINY.replace("run: A2C", "run: A3C"), "unknown run 'A3C'"),
    "badenv.yaml": (TINY.replace("stpn/Maze-v0", "stpn/Mase-v0"), "unknown env 'stpn/Mase-v0'"),
    "badmodel.yaml": (TINY.replace("core: stpn", "cores: stpn"), "custom_model_config key 'cores'"),
    "badcore.yaml": (TINY.replace("core: stpn", "core: transformer"), "'transformer'"),
    "badkey.yaml": (TINY.replace("gamma:", "gama:"), "unknown config key 'gama'"),
    "badenvcfg.yaml": (TINY.replace("size: 5", "size: 6"), "size"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_file_exits_2_with_one_line(name, tmp_path, capsys, no_ray_start):
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
        (["train", "file", "{spec}", "--num-cpus", "0"], "--num-cpus must be >= 1, got 0"),
        # 2 learners + the trial's main process: 3 CPUs (Tune would wait for them forever).
        (
            ["train", "file", "{spec}", "--num-cpus", "2", "--config", '{"num_learners": 2}'],
            "needs 3 CPUs (main process, env runners, learners), but --num-cpus gives it only 2",
        ),
        (["train", "file", "{spec}", "--config", '{"num_envs_per_env_runner": 0}'], "got 0"),
        (["train", "file", "{spec}", "--config", '{"num_env_runners": -1}'], "got -1"),
        (["train", "file", "{spec}", "--config", '{"lr": NaN}'], "lr is nan"),
        (["train", "file", "{spec}", "--config", '{"gamma": -Infinity}'], "gamma is -inf"),
        (
            ["train", "file", "{spec}", "--config", '{"lr": {"grid_search": [0.001, NaN]}}'],
            "lr.grid_search[1] is nan",
        ),
        (["train", "file", "{spec}", "--stop", '{"time_total_s": NaN}'], "finite number"),
        (
            ["train", "file", "{spec}", "--config", HIDDEN_GRID_WITH_A_BAD_POINT],
            "model_config['hidden_size'] must be a positive int, got -1",
        ),
        (["train", "file", "{spec}", "--storage-path", "{file}"], "is not a directory"),
        (
            ["train", "file", "{spec}", "--storage-path", "{file}/results"],
            "cannot be created: {file} is not a directory",
        ),
        (["evaluate", "no/such/checkpoint"], "checkpoint not found"),
        (["evaluate", "{dir}"], "no RLlib checkpoint"),
        (["evaluate", "{dir}", "--out", "{file}/eval.json"], "{file} is not a directory"),
        (["evaluate", "{dir}", "--out", "{dir}"], "is a directory; give a file name"),
        (["plot", "{dir}"], "no result.json or progress.csv"),
        (["fly"], "invalid choice"),
    ],
)
def test_bad_options_exit_2_with_one_line(
    args, message, tmp_path, capsys, monkeypatch, no_ray_start
):
    monkeypatch.chdir(tmp_path)  # where a relative default path would land
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY)
    a_file = tmp_path / "a_file"
    a_file.write_text("not a directory")
    before = sorted(tmp_path.rglob("*"))

    def fill(text: str) -> str:
        return (
            text.replace("{spec}", str(spec))
            .replace("{dir}", str(tmp_path))
            .replace("{file}", str(a_file))
        )

    assert cli.main([fill(a) for a in args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("rllib: error: "), err
    assert fill(message) in err, err
    assert sorted(tmp_path.rglob("*")) == before  # nothing written, nothing removed


def _checkpointed_trial(trained, tmp_path: Path) -> Path:
    """A copy of one trained trial (checkpoint_000000 and checkpoint_000001) to tamper with."""
    import shutil

    run_dir, _ = trained
    return Path(shutil.copytree(_trials(run_dir)[0], tmp_path / "trial"))


def test_evaluate_skips_an_incomplete_newest_checkpoint(trained, tmp_path):
    import shutil

    from rllib_stpn.evaluate import find_checkpoint

    trial = _checkpointed_trial(trained, tmp_path)
    # A run killed while writing its third checkpoint: the weights never made it to disk.
    partial = Path(shutil.copytree(trial / "checkpoint_000001", trial / "checkpoint_000002"))
    shutil.rmtree(partial / "learner_group")
    assert find_checkpoint(trial) == trial / "checkpoint_000001"
    assert find_checkpoint(tmp_path) == trial / "checkpoint_000001"


@pytest.mark.parametrize(
    "damage, message",
    [
        ("rm learner_group", "learner_group/learner/rl_module is missing"),
        ("rm algorithm_state.pkl", "algorithm_state.pkl or algorithm_state.msgpack is missing"),
        ("cut module_state.pkl", "module_state.pkl cannot be read"),
        ("cut rllib_checkpoint.json", "rllib_checkpoint.json cannot be read"),
    ],
)
def test_evaluate_on_a_broken_checkpoint_is_one_line(
    trained, tmp_path, capsys, damage, message, no_ray_start
):
    import shutil

    ckpt = _checkpointed_trial(trained, tmp_path) / "checkpoint_000001"
    action, name = damage.split()
    target = next(ckpt.rglob(name))
    if action == "rm":
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    else:  # a file cut in half, as a killed copy leaves it
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    out = tmp_path / "eval.json"
    assert cli.main(["evaluate", str(ckpt), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("rllib: error: ") and message in err, err
    assert not out.exists()
    # Given the trial directory, the intact older checkpoint is used instead.
    from rllib_stpn.evaluate import find_checkpoint

    assert find_checkpoint(ckpt.parent) == ckpt.parent / "checkpoint_000000"


def test_error_in_a_fresh_process_is_one_line(tmp_path):
    """No warning or traceback from the imports sneaks onto stderr."""
    (tmp_path / "f.yaml").write_text(TINY.replace("stpn/Maze-v0", "NoSuchEnv-v0"))
    proc = _rllib("train", "file", str(tmp_path / "f.yaml"), timeout=120)
    assert proc.returncode == 2
    assert proc.stderr == "rllib: error: unknown env 'NoSuchEnv-v0'\n"
    assert proc.stdout == ""


def _fresh_home_env(home: Path) -> dict[str, str]:
    """Environment with its own HOME (so ~/ray_results can be checked) and the shared torch
    extension cache (so the STPN kernel is not compiled again)."""
    from torch.utils.cpp_extension import get_default_build_root

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["TORCH_EXTENSIONS_DIR"] = os.environ.get("TORCH_EXTENSIONS_DIR", get_default_build_root())
    env["HOME"] = str(home)
    return env


@pytest.mark.parametrize(
    "args, message",
    [
        # A misspelt stop key: Tune would warn once and run forever.
        (["--stop", '{"training_iterations": 2}'], "unknown stop criterion 'training_iterations'"),
        # More env runners than the local Ray's CPUs: the trial would stay PENDING.
        (["--config", '{"num_env_runners": 64}'], "needs 65 CPUs"),
    ],
    ids=["stop-key", "cpus"],
)
def test_errors_found_once_ray_runs_are_one_line_and_leave_nothing(tmp_path, args, message):
    (tmp_path / "tiny.yaml").write_text(TINY)
    home = tmp_path / "home"
    home.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "rllib_stpn", "train", "file", "tiny.yaml", *args],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
        env=_fresh_home_env(home),
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("rllib: error: ")
    assert message in proc.stderr, proc.stderr
    assert not (home / "ray_results").exists()  # not even an empty one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "tiny.yaml"]


def test_stop_keys_are_checked_against_a_real_result(ray_session, tmp_path, monkeypatch):
    from rllib_stpn import experiments as ex

    spec = {**_tiny_spec(), "stop": {"training_iteration": 1}}
    (exp,) = ex.parse_experiments({"tiny": spec}, storage_path=str(tmp_path))
    result = ex.probe_result(exp)  # one iteration: 4 mazes x one 10-step episode
    config = ex.build_algorithm_config(exp)
    fast = ex._TUNE_RESULT_KEYS | {ex.STEPS_KEY} | ex._episode_result_keys(config)
    assert fast <= set(result)  # the keys accepted without a probe are real ones
    assert result["learners/default_policy/vf_loss"] >= 0

    # Those keys need no training iteration.
    with monkeypatch.context() as m:
        m.setattr(
            ex.probe, "probe_result", lambda _: pytest.fail("probed for a key every result has")
        )
        exp.stop = {"training_iteration": 3, "env_runners/episode_return_mean": 5.0}
        ex.check_stop_keys(exp)
    # Nested keys RLlib reports, the package's power metric and a legacy alias (mapped).
    spec["stop"] = {
        "learners/default_policy/vf_loss": 1e9,
        "env_runners/synaptic_power_mean": 1e9,
        "timesteps_total": 100,
    }
    (exp,) = ex.parse_experiments({"tiny": spec}, storage_path=str(tmp_path))
    assert "num_env_steps_sampled_lifetime" in exp.stop
    ex.check_stop_keys(exp)
    exp.stop = {"learners/default_policy/vf_los": 1.0}
    with pytest.raises(ex.ExperimentError, match="did you mean: learners/default_policy/vf_loss"):
        ex.check_stop_keys(exp)
    assert list(tmp_path.iterdir()) == []


def _tiny_spec() -> dict:
    import yaml

    spec = yaml.safe_load(TINY)["maze-tiny"]
    spec["config"]["model"]["custom_model_config"]["hidden_size"] = 4
    return spec


def test_remote_storage_path_reaches_tune_unchanged(monkeypatch):
    from ray import tune

    from rllib_stpn import experiments as ex

    seen = {}
    monkeypatch.setattr(tune, "run", lambda *a, **kw: seen.update(kw))
    (exp,) = ex.parse_experiments({"tiny": _tiny_spec()}, storage_path="s3://bucket/runs")
    ex.run_experiment(exp, validate=False)
    assert seen["storage_path"] == "s3://bucket/runs"
    assert seen["trial_name_creator"] is ex.trial_name  # A2C_stpn_Maze-v0_<id>: names the core
    (exp,) = ex.parse_experiments({"tiny": _tiny_spec()}, storage_path="~/runs")
    ex.run_experiment(exp, validate=False)
    assert seen["storage_path"] == os.path.expanduser("~/runs")


# An interrupted run: a 7x7 maze, 64 mazes per iteration (about 0.3 s each here), a checkpoint
# every 10 iterations; Ctrl-C lands a few iterations after the first checkpoint.
RESUMABLE = """\
maze-resume:
  run: A2C
  env: stpn/Maze-v0
  stop: {training_iteration: 24}
  config:
    env_config: {size: 7, episode_length: 50}
    num_env_runners: 0
    num_envs_per_env_runner: 64
    gym_env_vectorize_mode: vector_entry_point
    batch_mode: complete_episodes
    gamma: 0.9
    seed: 0
    model:
      custom_model: stpn
      max_seq_len: 50
      custom_model_config: {core: stpn, hidden_size: 8}
"""


def _iterations(result_json: Path) -> list[int]:
    """Iterations in a result.json, in file order (a line still being written is skipped)."""
    found = []
    for line in result_json.read_text().splitlines():
        try:
            found.append(json.loads(line)["training_iteration"])
        except ValueError:
            pass
    return found


def test_interrupted_run_resumes_and_plots_each_iteration_once(tmp_path, capsys):
    import shutil
    import signal
    import tempfile
    import time

    from rllib_stpn.plot import find_trials, read_progress

    (tmp_path / "resume.yaml").write_text(RESUMABLE)
    args = [sys.executable, "-m", "rllib_stpn", "train", "file", "resume.yaml"]
    args += ["--storage-path", "results", "--checkpoint-freq", "10", "--num-cpus", "2"]
    # Tune writes a trial's results under Ray's temp dir and copies them to the storage path
    # only with checkpoints: a Ray temp dir of this test's own shows them as they come (a
    # short path: Ray's socket paths must stay short).
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_TMPDIR"] = ray_tmp
    try:
        proc = subprocess.Popen(
            args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        live = "ray/session_*/artifacts/*/maze-resume/driver_artifacts/*/result.json"
        deadline = time.monotonic() + 180
        # Ctrl-C at iteration 12, two iterations after the checkpoint of iteration 10.
        while time.monotonic() < deadline and proc.poll() is None:
            done = [i for f in Path(ray_tmp).glob(live) for i in _iterations(f)]
            if done and max(done) >= 12:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, err[-3000:]
        assert "continue with the same command and --resume" in err, err[-3000:]
        run_dir = tmp_path / "results" / "maze-resume"
        (trial,) = find_trials([run_dir])
        first_run = _iterations(trial / "result.json")
        assert 12 <= max(first_run) < 20
        assert sorted(p.name for p in trial.glob("checkpoint_*")) == ["checkpoint_000000"]

        resumed = subprocess.run(
            [*args, "--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240
        )
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "--resume" not in resumed.stderr
    raw = _iterations(trial / "result.json")
    assert len(raw) > 24  # iterations 11, 12, ... were done twice
    series = read_progress(trial)
    assert series["iteration"] == list(range(1, 25))
    # The redone iterations count on from the checkpoint: 64 mazes x 50 steps per iteration.
    assert series["steps"] == [3200.0 * i for i in range(1, 25)]
    assert cli.main(["plot", str(run_dir), "--out", str(tmp_path / "plots")]) == 0
    assert capsys.readouterr().out.count("wrote ") == 3


# ------------------------------------------------------------------------------ Python API


def test_tune_run_sweep_from_python(ray_session, tmp_path):
    """Two trials (a grid over STPN's hidden size) through tune.run, as docs/cli.md shows."""
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
