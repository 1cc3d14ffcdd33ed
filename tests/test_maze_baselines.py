"""The maze's reference agents (benchmarks/tasks/maze.py): BFS oracle and random policy."""

from __future__ import annotations

import numpy as np
from rllib_stpn.envs.maze import MazeVectorEnv

from benchmarks.tasks import maze


def _flat(r: int, c: int, size: int = 13) -> int:
    return r * size + c


def test_shortest_distances_go_around_pillars():
    dist = maze.shortest_distances(13)
    assert (dist == dist.T).all()
    assert dist[_flat(6, 6), _flat(1, 1)] == 10  # Manhattan distance is reachable here
    assert dist[_flat(2, 1), _flat(2, 3)] == 4  # the pillar at (2, 2) forces a detour
    assert dist[_flat(0, 0), _flat(1, 1)] == -1  # walls are unreachable


def test_oracle_reaches_each_reward_in_the_shortest_number_of_steps():
    size, n = 9, 64
    dist = maze.shortest_distances(size)
    env = MazeVectorEnv(n, size=size, episode_length=100)
    env.reset(seed=3)
    pos = env.agent_cells @ np.array([size, 1])
    goal = env.reward_cells @ np.array([size, 1])
    remaining = np.where(pos == goal, 2, dist[goal, pos])  # on the reward at the start: 2 moves
    first_reward = np.full(n, -1)
    for t in range(1, 60):
        _, rewards, _, _, _ = env.step(maze.oracle_actions(env, dist))
        first_reward = np.where((first_reward < 0) & (rewards > 0), t, first_reward)
    assert (first_reward == remaining).all()


def test_baselines_bracket_the_scale():
    base = maze.baselines(7, 50, episodes=600)
    assert base["episodes"] == 600
    assert 0 <= base["random"] < base["oracle"]
    assert maze.fraction_of_oracle(base["random"], base) == 0.0
    assert maze.fraction_of_oracle(base["oracle"], base) == 1.0
    # The oracle collects a reward at least every (longest shortest path + 1) steps.
    longest = maze.shortest_distances(7).max()
    assert base["oracle"] >= 10.0 * (50 // (longest + 1)) - 1e-9
    assert maze.baselines(7, 50, episodes=600) is base  # measured once per setting
