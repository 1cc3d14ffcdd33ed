"""Registration of the package's env ids with gymnasium and with Ray Tune / RLlib.

gymnasium gets entry-point strings (nothing heavy is imported until an env is made). Tune gets
`functools.partial(make_rllib_env, env_id)`: cloudpickle stores it by reference to this module,
so an env-runner process that unpickles it imports `rllib_stpn.envs` (and registers) by itself.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import gymnasium as gym

from .atari import ATARI_ID, PONG_ID
from .maze import MAZE_ID
from .mujoco import INVERTED_PENDULUM_ID, MUJOCO_ID
from .popgym import POPGYM_IDS, POPGYM_TASKS

_MOD = "rllib_stpn.envs"
# id -> (entry point, vector entry point or None)
ENTRY_POINTS: dict[str, tuple[str, str | None]] = {
    MAZE_ID: (f"{_MOD}.maze:MazeEnv", f"{_MOD}.maze:MazeVectorEnv"),
    ATARI_ID: (f"{_MOD}.atari:make_atari", None),
    PONG_ID: (f"{_MOD}.atari:make_pong", None),
    MUJOCO_ID: (f"{_MOD}.mujoco:make_mujoco", None),
    INVERTED_PENDULUM_ID: (f"{_MOD}.mujoco:make_inverted_pendulum", None),
}
ENV_IDS: tuple[str, ...] = tuple(ENTRY_POINTS)
# POPGym's tasks (`.popgym`): one creator, the task as a fixed keyword of each id.
ENTRY_POINTS.update({env_id: (f"{_MOD}.popgym:make_popgym", None) for env_id in POPGYM_IDS})
FIXED_KWARGS: dict[str, dict[str, Any]] = {
    env_id: {"task": task, "_env_id": env_id} for env_id, task in POPGYM_TASKS.items()
}

_registered_with_tune = False


def make_rllib_env(env_id: str, env_config: Mapping[str, Any] | None = None) -> Any:
    """Tune/RLlib env creator: `env_config` holds the env's options.

    RLlib's env runner adds "num_envs" when it asks for a vector env (config
    `env_runners(gym_env_vectorize_mode="vector_entry_point")`); the maze then comes back as
    the numpy `MazeVectorEnv`, the other ids as a gymnasium `SyncVectorEnv`.
    """
    options = {**FIXED_KWARGS.get(env_id, {}), **(env_config or {})}
    num_envs = options.pop("num_envs", None)
    entry_point, vector_entry_point = ENTRY_POINTS[env_id]
    if num_envs is not None and vector_entry_point is not None:
        return gym.envs.registration.load_env_creator(vector_entry_point)(num_envs, **options)
    creator = gym.envs.registration.load_env_creator(entry_point)
    if num_envs is not None:
        return gym.vector.SyncVectorEnv([functools.partial(creator, **options)] * int(num_envs))
    return creator(**options)


def register_gym_envs() -> None:
    """Register every id with gymnasium (done on `import rllib_stpn.envs`; imports no Ray)."""
    for env_id, (entry_point, vector_entry_point) in ENTRY_POINTS.items():
        if env_id not in gym.registry:
            gym.register(
                env_id,
                entry_point=entry_point,
                vector_entry_point=vector_entry_point,
                kwargs=FIXED_KWARGS.get(env_id, {}),
            )


def register_envs() -> None:
    """Register every id with gymnasium and Tune; calling it again is cheap and harmless."""
    global _registered_with_tune
    register_gym_envs()
    if _registered_with_tune:
        return
    from ray.tune.registry import register_env

    for env_id in (*ENV_IDS, *POPGYM_IDS):
        register_env(env_id, functools.partial(make_rllib_env, env_id))
    _registered_with_tune = True
