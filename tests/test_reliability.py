"""Issue 18: faults and bad inputs end in one clear line (or a warning), never a hang, a raw
traceback or files left behind."""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

LOAD_KERNEL = "from rllib_stpn.nn import fused_cpp; fused_cpp.load(); print('kernel ok')"


def _private_kernel_cache(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """An environment with its own torch extensions dir, seeded with this checkout's build
    of the kernel when there is one (ninja then only checks it), and that build's directory."""
    from rllib_stpn.nn import fused_cpp

    name = fused_cpp._namespace()
    built = fused_cpp.build_directory(name)  # where this process's cache has (or gets) it
    root = tmp_path / "torch_extensions"
    target = root / name
    if any(built.glob("*.so")):
        shutil.copytree(built, target, ignore=shutil.ignore_patterns("lock", "build.flock"))
    else:
        target.mkdir(parents=True)
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(root)}
    env.pop(fused_cpp.DISABLE_ENV, None)
    return env, target


def test_kernel_name_differs_between_torch_installations(monkeypatch):
    """Two environments sharing a cache directory must not rebuild over each other's build."""
    import torch

    from rllib_stpn.nn import fused_cpp

    here = fused_cpp._namespace()
    assert fused_cpp._namespace() == here  # stable within one environment
    monkeypatch.setattr(torch, "__file__", "/elsewhere/site-packages/torch/__init__.py")
    assert fused_cpp._namespace() != here


def test_stale_kernel_lock_is_cleared(tmp_path):
    """A builder killed mid-build leaves torch's `lock`; torch would wait for it forever."""
    env, build_dir = _private_kernel_cache(tmp_path)
    (build_dir / "lock").touch()
    proc = subprocess.run(
        [sys.executable, "-c", LOAD_KERNEL],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "kernel ok" in proc.stdout
    assert not (build_dir / "lock").exists()


def test_kernel_lock_wait_is_bounded(tmp_path):
    """A live builder that never finishes: the wait ends in one line naming the lock."""
    env, build_dir = _private_kernel_cache(tmp_path)
    env["RLLIB_STPN_KERNEL_LOCK_TIMEOUT"] = "1"
    flock = build_dir / "build.flock"
    with open(flock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # this test process plays the stuck builder
        proc = subprocess.run(
            [sys.executable, "-c", LOAD_KERNEL],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("rllib_stpn.nn.fused_cpp.KernelLockTimeout: waited 1 s"), last
    assert f"rm {flock}" in last


# A maze small enough that Ray's start-up dominates; the stop criterion is never reached.
TINY_MAZE = """\
maze-tiny:
  run: A2C
  env: stpn/Maze-v0
  stop: {training_iteration: 100000}
  config:
    env_config: {size: 5, episode_length: 10}
    num_env_runners: 0
    num_envs_per_env_runner: 2
    rollout_fragment_length: 10
    model:
      custom_model: stpn
      max_seq_len: 10
      custom_model_config: {core: stpn, hidden_size: 4}
"""

# `python -m rllib_stpn` whose first import of `module` is hit by a Ctrl-C (SIGINT to itself).
_INTERRUPT_ON_IMPORT = """
import os, runpy, signal, sys

class Interrupt:
    def find_spec(self, name, path=None, target=None):
        if name == {module!r}:
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)

sys.meta_path.insert(0, Interrupt())
sys.argv = ["rllib", *{args!r}]
runpy.run_module("rllib_stpn", run_name="__main__", alter_sys=True)
"""


def _train_env(tmp_path: Path) -> dict[str, str]:
    from torch.utils.cpp_extension import get_default_build_root

    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["TORCH_EXTENSIONS_DIR"] = os.environ.get("TORCH_EXTENSIONS_DIR", get_default_build_root())
    env["HOME"] = str(home)
    return env


@pytest.mark.parametrize("module", ["rllib_stpn.cli", "ray"], ids=["startup", "ray-import"])
def test_ctrl_c_while_importing_is_one_line(tmp_path, module):
    (tmp_path / "tiny.yaml").write_text(TINY_MAZE)
    args = ["train", "file", "tiny.yaml", "--storage-path", "results"]
    code = _INTERRUPT_ON_IMPORT.format(module=module, args=args)
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=_train_env(tmp_path),
    )
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("rllib: interrupted"), (
        proc.stderr
    )
    assert not (tmp_path / "results").exists()


def test_ctrl_c_while_training_is_one_line(tmp_path):
    """Ctrl-C from the terminal reaches the whole process group, Ray's workers included."""
    (tmp_path / "tiny.yaml").write_text(TINY_MAZE)
    proc = subprocess.Popen(
        [sys.executable, "-m", "rllib_stpn", "train", "file", "tiny.yaml"]
        + ["--storage-path", "results", "--num-cpus", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=_train_env(tmp_path),
        start_new_session=True,
    )
    try:
        for line in proc.stdout:  # Tune's status table: the trial is training
            if "RUNNING" in line:
                break
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err[-2000:]
    assert err.count("\n") == 1 and err.startswith("rllib: interrupted with 1 trial(s)"), err


@pytest.fixture(scope="module")
def checkpointed(tmp_path_factory):
    """One iteration of TINY_MAZE through `rllib train`: (tmp dir, experiment dir)."""
    root = tmp_path_factory.mktemp("ckpt")
    (root / "tiny.yaml").write_text(TINY_MAZE)
    proc = subprocess.run(
        [sys.executable, "-m", "rllib_stpn", "train", "file", "tiny.yaml"]
        + ["--storage-path", "results", "--num-cpus", "2"]
        + ["--stop", '{"training_iteration": 1}'],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=root,
        env=_train_env(root),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (root / "home" / "ray_results").exists()
    return root, root / "results" / "maze-tiny"


def _damaged_copy(checkpointed, tmp_path: Path, damage: str) -> Path:
    """A copy of the run whose checkpoint's module weights are damaged as ``damage`` says."""
    import pickle

    _, run = checkpointed
    copy = Path(shutil.copytree(run, tmp_path / "results" / "maze-tiny"))
    (ckpt,) = copy.glob("*/checkpoint_000000")
    state = ckpt / "learner_group/learner/rl_module/default_policy/module_state.pkl"
    if damage == "foreign":  # another pickle in its place
        state.write_bytes(pickle.dumps({"foo": 1}))
    elif damage == "truncated":  # as a killed copy leaves it
        state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    elif damage == "shape":  # weights of another model size
        weights = pickle.loads(state.read_bytes())
        key = next(iter(weights))
        weights[key] = weights[key][:1]
        state.write_bytes(pickle.dumps(weights))
    return ckpt


@pytest.fixture
def no_ray_start(monkeypatch):
    from rllib_stpn import cli

    monkeypatch.setattr(cli, "_init_ray", lambda *a, **kw: pytest.fail("Ray was started"))


@pytest.mark.parametrize(
    "damage, message",
    [
        ("foreign", "module_state.pkl of default_policy does not match the module"),
        ("truncated", "module_state.pkl cannot be read"),
        ("shape", "has shape"),
    ],
)
def test_damaged_checkpoint_is_refused(
    checkpointed, tmp_path, capsys, monkeypatch, no_ray_start, damage, message
):
    from rllib_stpn import cli, restore_algorithm
    from rllib_stpn.checkpoints import check_checkpoint
    from rllib_stpn.experiments import ExperimentError

    root, run = checkpointed
    (intact,) = run.glob("*/checkpoint_000000")
    check_checkpoint(intact)  # the real thing passes
    ckpt = _damaged_copy(checkpointed, tmp_path, damage)

    capsys.readouterr()  # RLlib's own warnings while building the module above
    assert cli.main(["evaluate", str(ckpt)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("rllib: error: ") and message in err, err

    monkeypatch.chdir(tmp_path)
    shutil.copy(root / "tiny.yaml", tmp_path)
    assert cli.main(["train", "file", "tiny.yaml", "--storage-path", "results", "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("rllib: error: cannot resume"), err
    assert message in err, err

    with pytest.raises(ExperimentError, match="unusable"):
        restore_algorithm(ckpt)


def _alias_bomb() -> str:
    """Nine levels of ten aliases each: 10**9 values once expanded, a few hundred bytes."""
    lines = ["    b0: &b0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    for i in range(1, 10):
        lines.append(f"    b{i}: &b{i} [{', '.join([f'*b{i - 1}'] * 10)}]")
    return TINY_MAZE + "\n".join(lines) + "\n"


BAD_INPUTS = [
    (["--config", '{"grad_clip_by": "foo"}'], "`grad_clip_by` must be one of value, norm"),
    (["--config", '{"seed": "abc"}'], "`seed` must be an integer >= 0 or None, got 'abc'"),
    (["--config", '{"seed": -1}'], "`seed` must be an integer >= 0 or None, got -1"),
    (["--config", '{"lr": {"grid_search": []}}'], "lr: grid_search needs a non-empty list"),
    (["--config", '{"lr": {"grid_search": 0.001}}'], "got 0.001"),
    (["--config", '{"batch_mode": "foo"}'], "`batch_mode` must be one of truncate_episodes"),
    (["--config", '{"evaluation_interval": -1}'], "`evaluation_interval` must be an integer >= 0"),
    (["--storage-path", "/proc/rllib-results"], "is on a kernel pseudo filesystem"),
    (["--storage-path", "/sys/fs/cgroup/rllib-results"], "is on a kernel pseudo filesystem"),
    ("stop: 5", "'stop' of experiment 'maze-tiny' must be a mapping"),
    ("alias bomb", "more than 100000 values once its YAML aliases"),
]


@pytest.mark.parametrize("bad, message", BAD_INPUTS, ids=[str(b) for b, _ in BAD_INPUTS])
def test_bad_input_is_one_line_before_ray(
    tmp_path, capsys, monkeypatch, no_ray_start, bad, message
):
    from rllib_stpn import cli

    text, args = TINY_MAZE, []
    if bad == "stop: 5":
        text = TINY_MAZE.replace("stop: {training_iteration: 100000}", "stop: 5")
    elif bad == "alias bomb":
        text = _alias_bomb()
    else:
        args = bad
    (tmp_path / "tiny.yaml").write_text(text)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    if "--storage-path" not in args:
        args = [*args, "--storage-path", "results"]
    assert cli.main(["train", "file", "tiny.yaml", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("rllib: error: ") and message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.yaml"]  # nothing left behind


def test_evaluate_leaves_no_results_dir(checkpointed, tmp_path):
    """An Algorithm built outside Tune makes ~/ray_results/<timestamp>; evaluate removes it."""
    _, run = checkpointed
    env = _train_env(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "rllib_stpn", "evaluate", str(run), "--episodes", "1"]
        + ["--out", str(tmp_path / "eval.json")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr == "", proc.stderr
    assert "synaptic power / step" in proc.stdout
    assert not (Path(env["HOME"]) / "ray_results").exists()  # not even an empty one


def test_suite_home_is_temporary():
    """conftest.py moves HOME, so no test leaves ~/ray_results/<timestamp> behind."""
    assert Path.home().name.startswith("rllib-stpn-tests-home-")


def _trial_dir(root: Path, lines: list[bytes]) -> Path:
    trial = root / "run" / "A2C_trial_00000"
    trial.mkdir(parents=True)
    (trial / "result.json").write_bytes(b"\n".join(lines) + b"\n")
    return root / "run"


def _result_line(i: int) -> bytes:
    import json

    result = {
        "training_iteration": i,
        "num_env_steps_sampled_lifetime": 100 * i,
        "env_runners": {"episode_return_mean": float(i), "synaptic_power_mean": 2.0},
    }
    return json.dumps(result).encode()


@pytest.mark.parametrize(
    "case, message",
    [
        ("not utf-8", "nothing to plot: none of the 1 trial(s)"),
        ("no metrics", "nothing to plot"),
        ("out is a file", "is not a directory"),
        ("out under a file", "is not a directory"),
        ("out unwritable", "is on a kernel pseudo filesystem"),
    ],
)
def test_plot_errors_are_one_line_and_leave_nothing(tmp_path, capsys, case, message):
    from rllib_stpn import cli

    good = [_result_line(1), _result_line(2)]
    lines = {"not utf-8": [b"\xff\xfe\x00garbage\x9c"], "no metrics": [b'{"a": 1}']}
    run = _trial_dir(tmp_path, lines.get(case, good))
    (tmp_path / "file").write_text("x")
    out = {
        "out is a file": tmp_path / "file",
        "out under a file": tmp_path / "file" / "plots",
        "out unwritable": Path("/proc/rllib-plots"),
    }.get(case, tmp_path / "plots" / "new")
    assert cli.main(["plot", str(run), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("rllib: error: ") and message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "run"]


def test_plot_reads_around_bad_bytes_and_removes_its_out_on_failure(tmp_path, monkeypatch):
    from rllib_stpn import plot

    run = _trial_dir(tmp_path, [_result_line(1), b"\xff\xfe cut off", _result_line(2)])
    (trial,) = plot.find_trials([run])
    assert plot.read_progress(trial)["return"] == [1.0, 2.0]

    out = tmp_path / "plots" / "new"
    real_draw = plot._draw

    def draw_then_fail(plt, data, folder, written):
        real_draw(plt, data, folder, written)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(plot, "_draw", draw_then_fail)
    with pytest.raises(plot.ExperimentError, match="No space left on device"):
        plot.plot_runs([run], out)
    assert not (tmp_path / "plots").exists()


def test_non_finite_power_and_loss_are_reported_once():
    import io
    import math

    from rllib_stpn.callbacks import NonFiniteWarning, non_finite_metrics
    from rllib_stpn.evaluate import format_table, non_finite, summarize

    def result(i: int, power: float, loss: float) -> dict:
        return {
            "training_iteration": i,
            "env_runners": {"synaptic_power_mean": power, "episode_return_mean": 1.0},
            "learners": {"default_policy": {"total_loss": loss, "policy_loss": 0.5}},
            "config": {"lr": math.inf},  # not a metric
        }

    assert non_finite_metrics(result(1, 3.0, 0.1)) == []
    stream = io.StringIO()
    warn = NonFiniteWarning(stream)
    for i, (power, loss) in enumerate([(3.0, 0.1), (math.inf, 0.1), (math.inf, math.nan)]):
        warn.on_trial_result(i, [], "A2C_trial_0", result(i + 1, power, loss))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2, lines  # power once (not on each result), then the loss
    assert lines[0].startswith("rllib: warning: env_runners/synaptic_power_mean is inf")
    assert "normalize: false and no f_clamp" in lines[0] and "iteration 2" in lines[0]
    assert lines[1].startswith("rllib: warning: learners/default_policy/total_loss is nan")

    evaluated = summarize([1.0, 2.0], [10, 10], [1.0, math.inf])
    evaluated.update(checkpoint="c", algorithm="A2C", env="e", explore=True)
    evaluated["non_finite"] = non_finite(evaluated)
    assert evaluated["non_finite"] == ["synaptic_power_mean"]
    table = format_table(evaluated)
    assert "NON-FINITE" in table and "synaptic_power_mean is inf" in table


def test_restore_algorithm_restores_the_saved_weights(checkpointed, ray_session):
    import pickle

    import numpy as np

    from rllib_stpn import restore_algorithm

    _, run = checkpointed
    (ckpt,) = run.glob("*/checkpoint_000000")
    state = ckpt / "learner_group/learner/rl_module/default_policy/module_state.pkl"
    saved = pickle.loads(state.read_bytes())
    algo = restore_algorithm(run)  # an experiment dir: its newest usable checkpoint
    try:
        weights = algo.get_module().get_state()
        assert set(weights) == set(saved)
        for key, value in saved.items():
            np.testing.assert_array_equal(np.asarray(weights[key]), np.asarray(value))
    finally:
        algo.stop()


@pytest.mark.parametrize(
    "out, message",
    [
        ("/proc/rllib-eval.json", "--out directory /proc is on a kernel pseudo filesystem"),
        ("{tmp}/file/eval.json", "--out directory {tmp}/file is not a directory"),
        ("{tmp}", "is a directory; give a file name"),
    ],
)
def test_evaluate_out_is_checked_before_evaluating(tmp_path, capsys, no_ray_start, out, message):
    from rllib_stpn import cli

    (tmp_path / "file").write_text("x")
    out, message = out.format(tmp=tmp_path), message.format(tmp=tmp_path)
    assert cli.main(["evaluate", str(tmp_path / "no-checkpoint"), "--out", out]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("rllib: error: ") and message in err, err


def test_train_passes_the_non_finite_warning_to_tune(tmp_path, monkeypatch, capsys):
    """`rllib train` hands Tune the callback above (Tune itself is replaced here)."""
    from types import SimpleNamespace

    from rllib_stpn import cli
    from rllib_stpn import experiments as ex
    from rllib_stpn.callbacks import NonFiniteWarning

    seen = {}

    def fake_run(exp, **kwargs):
        seen.update(kwargs)
        return SimpleNamespace(experiment_path=str(tmp_path / "results"), trials=[])

    monkeypatch.setattr(cli, "_init_ray", lambda *a, **kw: None)
    monkeypatch.setattr(cli, "_cluster_address", lambda: "ray://elsewhere:10001")
    monkeypatch.setattr(ex, "run_experiment", fake_run)
    (tmp_path / "tiny.yaml").write_text(TINY_MAZE)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "file", "tiny.yaml", "--storage-path", "results"]) == 0
    assert [type(c) for c in seen["callbacks"]] == [NonFiniteWarning]
