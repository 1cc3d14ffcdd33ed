"""A missing optional dependency is one line that names the pip command of its extra.

The extras are installed here, so each test makes one of them unimportable for its duration
(``sys.modules[name] = None`` makes ``import name`` raise ModuleNotFoundError).
"""

from __future__ import annotations

import math
import sys

import gymnasium as gym
import pytest
import rllib_stpn.envs  # noqa: F401  (the env ids, for gymnasium)

from rllib_stpn import _extras, cli
from rllib_stpn._extras import MissingExtraError, require


@pytest.mark.parametrize(
    ("missing", "env_id", "extra"),
    [
        ("ale_py", "stpn/Pong-v0", "atari"),
        ("ale_py", "stpn/Atari-v0", "atari"),
        ("cv2", "stpn/Pong-v0", "atari"),
        ("mujoco", "stpn/InvertedPendulum-v0", "mujoco"),
        ("mujoco", "stpn/MuJoCo-v0", "mujoco"),
        ("imageio", "stpn/MuJoCo-v0", "mujoco"),
    ],
)
def test_env_without_its_extra(monkeypatch, missing, env_id, extra):
    monkeypatch.setitem(sys.modules, missing, None)
    with pytest.raises(MissingExtraError) as info:
        gym.make(env_id)
    assert str(info.value) == (
        f"{env_id} needs the '{extra}' extra ({missing} is not installed): "
        f"pip install 'rllib-stpn[{extra}]'"
    )


def test_atari_games_without_ale(monkeypatch):
    monkeypatch.setitem(sys.modules, "ale_py", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'rllib-stpn\[atari\]'"):
        rllib_stpn.envs.atari_games()


def test_rllib_plot_without_matplotlib_is_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert cli.main(["plot", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == (
        "rllib: error: rllib plot needs the 'plot' extra (matplotlib is not installed): "
        "pip install 'rllib-stpn[plot]'\n"
    )


def test_yaml_ale_env_without_ale(monkeypatch):
    from rllib_stpn import experiments

    monkeypatch.setitem(sys.modules, "ale_py", None)
    with pytest.raises(MissingExtraError, match=r"ALE/Pong-v5 needs the 'atari' extra"):
        experiments.check_env("ALE/Pong-v5")


def test_present_module_is_returned():
    assert require("math", "plot", "this test") is math


def test_other_import_failures_are_not_hidden(monkeypatch):
    """An installed module whose own import fails (here: a dependency of it) keeps its error."""

    def broken(name):
        raise ModuleNotFoundError("No module named 'libfoo'", name="libfoo")

    monkeypatch.setattr(_extras.importlib, "import_module", broken)
    with pytest.raises(ModuleNotFoundError) as info:
        require("cv2", "atari", "stpn/Pong-v0")
    assert not isinstance(info.value, MissingExtraError)
    assert info.value.name == "libfoo"
