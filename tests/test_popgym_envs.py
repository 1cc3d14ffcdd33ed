"""POPGym ids: the wrappers on hand-made spaces, gymnasium's checker on the suite's envs, the
task left unchanged, options, and the one-line error without the `[popgym]` extra."""

from __future__ import annotations

import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from rllib_stpn.envs import POPGYM_IDS, make_rllib_env
from rllib_stpn.envs.popgym import (
    DiscreteAction,
    FlatFloatObservation,
    FreshInfo,
    PreviousAction,
    null_action,
)

from benchmarks.popgym_suite import SUITE_ENVS as SUITE
from rllib_stpn._extras import MissingExtraError


class ScriptedEnv(gym.Env):
    """Returns the observations it is given, in order; one info dict shared by every step
    (as CountRecall does)."""

    def __init__(self, observation_space, action_space, observations):
        self.observation_space, self.action_space = observation_space, action_space
        self._obs, self._t, self._info = observations, 0, {"shared": True}
        self.actions = []

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._t = 0
        return self._obs[0], self._info

    def step(self, action):
        self.actions.append(action)
        self._t += 1
        return self._obs[self._t], 0.0, self._t == len(self._obs) - 1, False, self._info


def test_flat_float_observation_one_hots_categorical_parts():
    space = gym.spaces.Tuple(
        (
            gym.spaces.Discrete(3),
            gym.spaces.MultiDiscrete([2, 3]),
            gym.spaces.Box(-1.0, 1.0, (2,), np.float64),
            gym.spaces.Discrete(2, start=1),
        )
    )
    obs = [(2, np.array([1, 0]), np.array([0.5, -0.25]), 1)]
    env = FlatFloatObservation(ScriptedEnv(space, gym.spaces.Discrete(2), obs))
    assert env.observation_space == gym.spaces.Box(
        np.array([0, 0, 0, 0, 0, 0, 0, 0, -1, -1, 0, 0], np.float32),
        np.array([1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1], np.float32),
        dtype=np.float32,
    )
    got, _ = env.reset()
    expected = [0, 0, 1, 0, 1, 1, 0, 0, 0.5, -0.25, 1, 0]
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, np.array(expected, np.float32))


def test_previous_action_null_action_flag_then_last_action():
    space = gym.spaces.Discrete(3)
    env = PreviousAction(ScriptedEnv(space, gym.spaces.Discrete(4), [0, 1, 2, 0]))
    assert env.observation_space == gym.spaces.Tuple(
        (space, gym.spaces.Discrete(4), gym.spaces.Discrete(2))
    )
    assert env.reset()[0] == (0, 0, 1)  # null action 0, first step
    assert env.step(3)[0] == (1, 3, 0)
    assert env.step(2)[0] == (2, 2, 0)
    assert env.reset()[0] == (0, 0, 1)  # reset clears it
    # The null action: 0 where the space holds it, else its lowest value.
    assert null_action(gym.spaces.Discrete(3, start=2)) == 2
    np.testing.assert_array_equal(null_action(gym.spaces.Box(1.0, 2.0, (2,))), [1.0, 1.0])
    np.testing.assert_array_equal(null_action(gym.spaces.Box(-2.0, 2.0, (1,))), [0.0])


def test_discrete_action_covers_every_multidiscrete_action_once():
    inner = ScriptedEnv(gym.spaces.Discrete(1), gym.spaces.MultiDiscrete([2, 3]), [0] * 7)
    env = DiscreteAction(inner)
    assert env.action_space == gym.spaces.Discrete(6)
    env.reset()
    for a in range(6):
        env.step(a)
    assert [tuple(int(v) for v in a) for a in inner.actions] == [
        (i, j) for i in range(2) for j in range(3)
    ]


def test_fresh_info_dicts():
    inner = ScriptedEnv(gym.spaces.Discrete(2), gym.spaces.Discrete(2), [0, 1, 0])
    inner._info = {"counts": np.zeros(2)}
    env = FreshInfo(inner)
    _, info0 = env.reset()
    inner._info["counts"][0] += 1  # the env keeps counting into the array it handed out
    info1 = env.step(0)[4]
    assert info0["counts"].tolist() == [0, 0] and info1["counts"].tolist() == [1, 0]


# --- With POPGym installed (the `[popgym]` extra) ------------------------------------------


def test_ids_registered_for_gymnasium_and_tune():
    from ray.tune.registry import ENV_CREATOR, _global_registry
    from rllib_stpn.envs import register_envs

    assert len(POPGYM_IDS) == 48
    assert {f"popgym/{t}-v0" for t in SUITE} <= set(POPGYM_IDS)
    register_envs()
    for env_id in POPGYM_IDS:
        assert env_id in gym.registry and _global_registry.contains(ENV_CREATOR, env_id)


@pytest.mark.parametrize("env_id", [i for i in POPGYM_IDS if "Labyrinth" not in i])
def test_every_env_passes_the_checker(env_id):
    """Every id but the Labyrinths (mazelib), the six of the suite among them."""
    pytest.importorskip("popgym")
    env = gym.make(env_id)
    assert isinstance(env.observation_space, gym.spaces.Box) and env.observation_space.shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_env(env)  # render check included: no render mode is offered
    env.close()


def test_count_recall_info_is_no_longer_mutated_after_the_step():
    pytest.importorskip("popgym")
    from popgym.envs import CountRecallEasy

    raw, env = CountRecallEasy(), make_rllib_env("popgym/CountRecallEasy-v0")
    for e in (raw, env):
        e.reset(seed=0)
        first = e.step(0)[4]
        kept = first["counts"].copy()
        e.step(0)
        changed = not np.array_equal(first["counts"], kept)
        assert changed == (e is raw)  # POPGym counts on into the array it handed out


@pytest.mark.parametrize("task", ["RepeatPreviousEasy", "PositionOnlyCartPoleEasy"])
def test_task_unchanged_and_observation_layout(task):
    """Same seed, same actions: the wrapped env's rewards and episode ends are the raw env's,
    and its observation is [raw one-hot/flat, previous action one-hot, first-step flag]."""
    pytest.importorskip("popgym")
    import popgym.envs

    raw = getattr(popgym.envs, task)()
    env = make_rllib_env(f"popgym/{task}-v0")
    raw_obs, _ = raw.reset(seed=3)
    obs, _ = env.reset(seed=3)
    n_actions = raw.action_space.n
    flat = gym.spaces.flatten(raw.observation_space, raw_obs)
    np.testing.assert_allclose(obs, np.concatenate([flat, np.eye(n_actions)[0], [0, 1]]))
    rng = np.random.default_rng(0)
    for _ in range(300):
        a = int(rng.integers(n_actions))
        r1, t1, u1 = raw.step(a)[1:4]
        obs, r2, t2, u2, _ = env.step(a)
        assert (r1, t1, u1) == (r2, t2, u2)
        np.testing.assert_array_equal(obs[-n_actions - 2 :], [*np.eye(n_actions)[a], 1, 0])
        if t1 or u1:
            break
    assert t1 or u1  # an episode ended within the loop


def test_previous_action_option_and_bad_options():
    pytest.importorskip("popgym")
    with_prev = make_rllib_env("popgym/RepeatFirstEasy-v0")
    without = make_rllib_env("popgym/RepeatFirstEasy-v0", {"previous_action": False})
    # 4 suits + 4 cards one-hot... whatever POPGym gives, plus 4 actions and the 2-way flag.
    assert with_prev.observation_space.shape[0] == without.observation_space.shape[0] + 4 + 2
    cases = [
        ({"prev_action": True}, "unknown option(s) 'prev_action'; valid options are"),
        ({"previous_action": 1}, "previous_action must be True or False, got 1"),
        ({"task": "RepeatFirstHard"}, "the id fixes the task"),
        ({"render_mode": "human"}, "render_mode must be None"),
    ]
    for options, match in cases:
        with pytest.raises(ValueError, match=match.replace("(", r"\(").replace(")", r"\)")) as e:
            make_rllib_env("popgym/RepeatFirstEasy-v0", options)
        assert "\n" not in str(e.value) and "popgym/RepeatFirstEasy-v0" in str(e.value)


def test_without_the_extra_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "popgym", None)
    for make in (
        lambda: gym.make("popgym/RepeatPreviousEasy-v0"),
        lambda: make_rllib_env("popgym/RepeatPreviousEasy-v0"),
    ):
        with pytest.raises(MissingExtraError) as info:
            make()
        assert str(info.value) == (
            "popgym/RepeatPreviousEasy-v0 needs the 'popgym' extra (popgym is not installed): "
            "pip install 'rllib-stpn[popgym]'"
        )


def test_yaml_without_the_extra_is_one_line(monkeypatch, capsys):
    from pathlib import Path

    from rllib_stpn import cli

    monkeypatch.setitem(sys.modules, "popgym", None)
    yaml = Path(__file__).resolve().parents[1] / "tuned_examples" / "popgym-ppo-gru.yaml"
    assert cli.main(["train", "file", str(yaml)]) == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith("rllib: error: env 'popgym/RepeatPreviousEasy-v0' cannot be created")
    assert last.endswith("pip install 'rllib-stpn[popgym]'")
