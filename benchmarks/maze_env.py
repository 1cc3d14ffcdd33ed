"""Steps per second of the numpy-vectorised maze vs gymnasium's SyncVectorEnv of single mazes.

Both step 512 mazes (the paper's batch) with the same random actions, including the autoresets
every 200 steps; the ratio printed is measured in this one run.

    python -m benchmarks.maze_env [--num-envs 512] [--seconds 3]
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np
from rllib_stpn.envs.maze import MazeEnv, MazeVectorEnv


def steps_per_second(env: gym.vector.VectorEnv, seconds: float, seed: int = 0) -> float:
    """Maze-steps per second (vector steps x num_envs) over about `seconds` of stepping."""
    rng = np.random.default_rng(seed)
    actions = rng.integers(4, size=(1024, env.num_envs))
    env.reset(seed=seed)
    env.step(actions[0])  # warm-up
    steps, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(10):
            env.step(actions[steps % len(actions)])
            steps += 1
    return steps * env.num_envs / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-envs", type=int, default=512)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    n = args.num_envs
    vector = MazeVectorEnv(n)
    sync = gym.vector.SyncVectorEnv([MazeEnv for _ in range(n)])
    fast = steps_per_second(vector, args.seconds)
    slow = steps_per_second(sync, args.seconds)
    print(f"MazeVectorEnv ({n} mazes):            {fast:12,.0f} maze-steps/s")
    print(f"SyncVectorEnv of {n} MazeEnv:         {slow:12,.0f} maze-steps/s")
    print(f"speed-up: {fast / slow:.1f}x (target >= 20x)")


if __name__ == "__main__":
    main()
