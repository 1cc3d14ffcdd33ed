"""The env ids: maze semantics against hand-worked steps, vector == single, Atari, MuJoCo, RLlib."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

# Importing rllib_stpn (the parent package) registers the ids.
from rllib_stpn.envs import (
    ENV_IDS,
    MazeEnv,
    MazeVectorEnv,
    make_rllib_env,
    maze_layout,
    register_envs,
)

UP, DOWN, LEFT, RIGHT = 0, 1, 2, 3


def _obs(neighbourhood, step_fraction, prev_reward, prev_action):
    onehot = np.zeros(4, np.float32)
    if prev_action is not None:
        onehot[prev_action] = 1.0
    extras = [0.0, 1.0, step_fraction, prev_reward]
    return np.array([*neighbourhood, *extras, *onehot], dtype=np.float32)


def _seed_with_reward_at(cell, forbidden=False, **options):
    """First seed whose reward cell is `cell` (or, with forbidden=True, is not in `cell`)."""
    env = MazeEnv(**options)
    for seed in range(5000):
        env.reset(seed=seed)
        if (env.reward_cell in cell) != forbidden:
            return seed
    raise AssertionError("no such seed")


def test_ids_registered_for_gymnasium_and_tune():
    from ray.tune.registry import ENV_CREATOR, _global_registry

    assert set(ENV_IDS) == {
        "stpn/Maze-v0",
        "stpn/Atari-v0",
        "stpn/Pong-v0",
        "stpn/MuJoCo-v0",
        "stpn/InvertedPendulum-v0",
    }
    for env_id in ENV_IDS:
        assert env_id in gym.registry  # importing rllib_stpn.envs did this
    register_envs()  # Tune/RLlib (also done by rllib_stpn.register())
    register_envs()  # idempotent: no error, no duplicate warning
    for env_id in ENV_IDS:
        assert _global_registry.contains(ENV_CREATOR, env_id)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_check_env(env_id):
    env = gym.make(env_id)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_env(env.unwrapped if env_id == "stpn/Maze-v0" else env, skip_render_check=True)
    env.close()


def test_maze_layout():
    walls = maze_layout(13)
    assert walls[0].all() and walls[-1].all() and walls[:, 0].all() and walls[:, -1].all()
    for r in range(1, 12):
        for c in range(1, 12):
            expected = r % 2 == 0 and c % 2 == 0 and (r, c) != (6, 6)
            assert walls[r, c] == expected, (r, c)
    assert (~walls).sum() == 11 * 11 - 25 + 1
    assert maze_layout(5).tolist()[2] == [True, False, False, False, True]


def test_maze_observations_step_by_step():
    path = {(6, 6), (5, 6), (5, 7), (6, 7)}
    seed = _seed_with_reward_at(path, forbidden=True, episode_length=10, wall_penalty=0.5)
    env = MazeEnv(episode_length=10, wall_penalty=0.5)
    obs, info = env.reset(seed=seed)
    assert obs.dtype == np.float32 and obs.shape == (17,) and info == {}
    assert env.agent_cell == (6, 6)
    np.testing.assert_array_equal(obs, _obs([0] * 9, 0.0, 0.0, None))
    # Up to (5, 6): the cell above, (4, 6), is a wall.
    steps = [
        (UP, (5, 6), [0, 1, 0, 0, 0, 0, 0, 0, 0], 0.0),
        (UP, (5, 6), [0, 1, 0, 0, 0, 0, 0, 0, 0], -0.5),  # bumps into (4, 6)
        (RIGHT, (5, 7), [1, 0, 1, 0, 0, 0, 0, 0, 1], 0.0),
        (DOWN, (6, 7), [0, 0, 0, 0, 0, 1, 0, 0, 0], 0.0),
        (LEFT, (6, 6), [0] * 9, 0.0),
    ]
    for t, (action, cell, neighbourhood, reward) in enumerate(steps, start=1):
        obs, r, terminated, truncated, _ = env.step(action)
        assert env.agent_cell == cell
        assert r == reward and not terminated and not truncated
        np.testing.assert_array_equal(obs, _obs(neighbourhood, t / 10, reward, action))


def test_maze_reward_and_teleport():
    seed = _seed_with_reward_at({(5, 6)})
    env = MazeEnv()
    env.reset(seed=seed)
    obs, reward, _, _, _ = env.step(UP)
    assert reward == 10.0 and obs[12] == 10.0
    row, col = env.agent_cell
    assert env.agent_cell != (5, 6) and not maze_layout(13)[row, col]
    np.testing.assert_array_equal(
        obs[:9], maze_layout(13)[row - 1 : row + 2, col - 1 : col + 2].ravel()
    )
    # Teleports are uniform over the free cells other than the reward cell: a small maze with
    # a random walker hits the reward often; every other free cell must be a landing place.
    env = MazeEnv(size=5, episode_length=1000)
    landed: dict[tuple[int, int], int] = {}
    rng = np.random.default_rng(0)
    for episode in range(3):
        env.reset(seed=episode)
        for _ in range(1000):
            _, r, _, _, _ = env.step(int(rng.integers(4)))
            if r > 0:
                assert env.agent_cell != env.reward_cell
                landed[env.agent_cell] = landed.get(env.agent_cell, 0) + 1
    assert sum(landed.values()) > 200
    assert len(landed) == 9  # all 9 free cells were reward cells once or landing cells


def test_maze_truncates_after_episode_length():
    env = MazeEnv()
    env.reset(seed=0)
    rng = np.random.default_rng(1)
    for t in range(1, 201):
        obs, _, terminated, truncated, _ = env.step(int(rng.integers(4)))
        assert not terminated and truncated == (t == 200)
    assert obs[11] == 1.0
    with pytest.raises(RuntimeError, match="reset"):
        env.step(0)
    obs, _ = env.reset()
    assert obs[11] == 0.0 and env.agent_cell == (6, 6)


def test_maze_render_ansi():
    env = gym.make("stpn/Maze-v0", render_mode="ansi")
    env.reset(seed=3)
    picture = env.render().splitlines()
    grid = picture[1:]
    assert picture[0].startswith("step 0/200") and len(grid) == 13
    assert grid[6][6] == "A" and sum(line.count("R") for line in grid) == 1
    assert sum(line.count("#") for line in grid) == maze_layout(13).sum()


@pytest.mark.parametrize("options", [{}, {"size": 5, "episode_length": 17, "wall_penalty": 0.3}])
def test_vector_maze_equals_single_mazes(options):
    """Numpy stepping == gymnasium's SyncVectorEnv of single mazes, autoresets included."""
    n = 24
    vector = gym.make_vec("stpn/Maze-v0", num_envs=n, **options)
    assert isinstance(vector.unwrapped, MazeVectorEnv)
    reference = gym.vector.SyncVectorEnv([lambda: MazeEnv(**options) for _ in range(n)])
    obs_v, _ = vector.reset(seed=11)
    obs_s, _ = reference.reset(seed=11)
    np.testing.assert_array_equal(obs_v, obs_s)
    rng = np.random.default_rng(5)
    rewards_seen = 0
    for _ in range(450):
        actions = rng.integers(4, size=n)
        out_v = vector.step(actions)
        out_s = reference.step(actions)
        for a, b in zip(out_v[:4], out_s[:4]):
            np.testing.assert_array_equal(a, b)
        rewards_seen += int((out_v[1] > 0).sum())
    assert rewards_seen > 20  # teleports happened and were drawn identically
    assert vector.single_observation_space == reference.single_observation_space
    assert vector.single_action_space == gym.spaces.Discrete(4)


def test_maze_seeding_reproducible():
    def rollout(seed):
        env = MazeEnv(size=7)
        obs, _ = env.reset(seed=seed)
        rng = np.random.default_rng(0)
        trace = [obs]
        for _ in range(300):
            obs, r, _, truncated, _ = env.step(int(rng.integers(4)))
            trace.append(obs)
            if truncated:
                obs, _ = env.reset()
                trace.append(obs)
        return np.stack(trace)

    np.testing.assert_array_equal(rollout(4), rollout(4))
    assert not np.array_equal(rollout(4), rollout(5))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"size": 12}, "size must be an odd integer >= 5, got 12"),
        ({"size": 3}, "size must be an odd integer >= 5, got 3"),
        ({"size": "13"}, "size must be an odd integer"),
        ({"episode_length": 0}, "episode_length must be an integer >= 1, got 0"),
        ({"episode_length": -5}, "episode_length must be an integer >= 1"),
        ({"wall_penalty": -1.0}, "wall_penalty must be a finite number >= 0.0"),
        ({"reward": float("nan")}, "reward must be a finite number"),
        ({"sise": 13}, "unknown option(s) 'sise'; valid options are: "),
    ],
)
def test_maze_bad_options(options, message):
    for make in (
        lambda: gym.make("stpn/Maze-v0", **options),
        lambda: make_rllib_env("stpn/Maze-v0", options),
        lambda: MazeVectorEnv(4, **options),
    ):
        with pytest.raises(ValueError) as err:
            make()
        assert message in str(err.value) and "\n" not in str(err.value)


def test_pong_observations():
    env = gym.make("stpn/Pong-v0")
    obs, _ = env.reset(seed=0)
    assert obs.shape == (84, 84, 1) and obs.dtype == np.uint8
    assert env.observation_space == gym.spaces.Box(0, 255, (84, 84, 1), np.uint8)
    assert env.action_space == gym.spaces.Discrete(6)  # minimal action set
    stacked = gym.make("stpn/Pong-v0", frame_stack=4)
    obs4, _ = stacked.reset(seed=0)
    assert obs4.shape == (84, 84, 4) and obs4.dtype == np.uint8
    np.testing.assert_array_equal(obs4, np.repeat(obs, 4, axis=-1))
    frames = [obs] * 4  # the stack starts filled with the first frame
    for action in [2, 3, 2, 2, 3, 0]:
        obs, reward, terminated, truncated, _ = env.step(action)
        obs4, reward4, *_ = stacked.step(action)
        frames.append(obs)
        assert reward == reward4 and not terminated and not truncated
        np.testing.assert_array_equal(obs4, np.concatenate(frames[-4:], axis=-1))
    assert len({f.tobytes() for f in frames}) > 1  # the picture moves
    small = make_rllib_env("stpn/Atari-v0", {"game": "Breakout", "screen_size": 42})
    assert small.reset(seed=0)[0].shape == (42, 42, 1) and small.action_space.n == 4


@pytest.mark.parametrize(
    ("env_id", "options", "message"),
    [
        ("stpn/Atari-v0", {"game": "Pongg"}, "unknown Atari game 'Pongg'; did you mean 'Pong'"),
        ("stpn/Atari-v0", {"frame_stack": 0}, "frame_stack must be an integer >= 1, got 0"),
        ("stpn/Atari-v0", {"noop_max": -1}, "noop_max must be an integer >= 0"),
        ("stpn/Pong-v0", {"game": "Breakout"}, "unknown option(s) 'game'"),
        ("stpn/MuJoCo-v0", {"task": "Nope-v5"}, "unknown MuJoCo task 'Nope-v5'"),
        ("stpn/MuJoCo-v0", {"task": "CartPole-v1"}, "unknown MuJoCo task 'CartPole-v1'"),
        ("stpn/InvertedPendulum-v0", {"task": "Hopper-v5"}, "unknown option(s) 'task'"),
    ],
)
def test_atari_mujoco_bad_options(env_id, options, message):
    with pytest.raises(ValueError) as err:
        make_rllib_env(env_id, options)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_inverted_pendulum_reset_and_steps():
    env = gym.make("stpn/InvertedPendulum-v0")
    obs, _ = env.reset(seed=0)
    assert obs.shape == (4,) and np.abs(obs).max() < 0.02
    assert env.action_space == gym.spaces.Box(-3.0, 3.0, (1,), np.float32)
    for _ in range(3):
        obs, reward, terminated, truncated, _ = env.step(np.zeros(1, np.float32))
        assert reward == 1.0 and not terminated and not truncated
    other = make_rllib_env("stpn/MuJoCo-v0", {"task": "InvertedDoublePendulum-v5"})
    assert other.reset(seed=0)[0].shape == (9,)


def _to_float_connector(env=None, spaces=None, device=None):
    """RLlib's default CNN wants float images; scale uint8 observations to [0, 1]."""
    from ray.rllib.connectors.env_to_module.observation_preprocessor import (
        SingleAgentObservationPreprocessor,
    )

    class ToFloat(SingleAgentObservationPreprocessor):
        def recompute_output_observation_space(self, obs_space, act_space):
            if obs_space.dtype != np.uint8:
                return obs_space
            return gym.spaces.Box(0.0, 1.0, obs_space.shape, np.float32)

        def preprocess(self, observation, episode):
            if observation.dtype != np.uint8:
                return observation
            return observation.astype(np.float32) / 255.0

    return ToFloat()


@pytest.mark.parametrize(
    ("env_id", "env_config"),
    [
        ("stpn/Maze-v0", {"episode_length": 20}),
        ("stpn/Pong-v0", {"screen_size": 42}),
        ("stpn/Atari-v0", {"game": "Breakout", "screen_size": 42, "frame_stack": 2}),
        ("stpn/MuJoCo-v0", {}),
        ("stpn/InvertedPendulum-v0", {}),
    ],
)
def test_rllib_ppo_trains_one_iteration(ray_session, env_id, env_config):
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    register_envs()  # the ids, for RLlib (rllib_stpn.register() does it too)

    # A small CNN for the 42x42 images keeps this a build test, not a benchmark.
    model = DefaultModelConfig(conv_filters=[[8, 8, 4], [8, 4, 2]], fcnet_hiddens=[32])

    config = (
        PPOConfig()
        .environment(env_id, env_config=env_config)
        .env_runners(
            num_env_runners=0,
            rollout_fragment_length=32,
            env_to_module_connector=_to_float_connector,
        )
        .training(train_batch_size_per_learner=32, minibatch_size=16, num_epochs=1)
        .rl_module(model_config=model)
    )
    algo = config.build_algo()
    try:
        result = algo.train()
        assert result["env_runners"]["num_env_steps_sampled_lifetime"] >= 32
        assert "learners" in result
    finally:
        algo.stop()


def test_rllib_remote_runner_uses_vector_maze(ray_session):
    """In a remote env runner, "vector_entry_point" mode gets the numpy MazeVectorEnv."""
    from ray.rllib.algorithms.ppo import PPOConfig

    register_envs()

    config = (
        PPOConfig()
        .environment("stpn/Maze-v0", env_config={"episode_length": 8})
        .env_runners(
            num_env_runners=1,
            num_envs_per_env_runner=4,
            gym_env_vectorize_mode="vector_entry_point",
            rollout_fragment_length=8,
        )
        .training(train_batch_size_per_learner=32, minibatch_size=16, num_epochs=1)
    )
    algo = config.build_algo()
    try:
        result = algo.train()
        kinds = algo.env_runner_group.foreach_env_runner(
            lambda runner: (type(runner.env.unwrapped).__name__, runner.num_envs),
            local_env_runner=False,
        )
        assert kinds == [("MazeVectorEnv", 4)]
        assert result["env_runners"]["num_episodes_lifetime"] >= 4
    finally:
        algo.stop()
