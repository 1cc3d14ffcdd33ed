"""Environments of the STPN paper (maze, Atari, MuJoCo), installed as `rllib_stpn.envs`.

Ids: "stpn/Maze-v0", "stpn/Atari-v0", "stpn/Pong-v0", "stpn/MuJoCo-v0",
"stpn/InvertedPendulum-v0", and POPGym's tasks as "popgym/<Task>-v0" (`POPGYM_IDS`).
Importing this package registers them with gymnasium (entry-point strings, nothing heavy);
`rllib_stpn.register()` also registers them with Tune/RLlib.
"""

from .atari import ATARI_ID, PONG_ID, atari_games, make_atari, make_pong
from .maze import MAZE_ID, MazeEnv, MazeVectorEnv, maze_layout
from .mujoco import (
    INVERTED_PENDULUM_ID,
    MUJOCO_ID,
    make_inverted_pendulum,
    make_mujoco,
    mujoco_tasks,
)
from .popgym import POPGYM_IDS, make_popgym
from .registration import ENV_IDS, make_rllib_env, register_envs, register_gym_envs

__all__ = [
    "ATARI_ID",
    "ENV_IDS",
    "INVERTED_PENDULUM_ID",
    "MAZE_ID",
    "MUJOCO_ID",
    "PONG_ID",
    "POPGYM_IDS",
    "MazeEnv",
    "MazeVectorEnv",
    "atari_games",
    "make_atari",
    "make_inverted_pendulum",
    "make_mujoco",
    "make_pong",
    "make_popgym",
    "make_rllib_env",
    "maze_layout",
    "mujoco_tasks",
    "register_envs",
    "register_gym_envs",
]

register_gym_envs()
