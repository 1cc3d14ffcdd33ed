"""The maze exploration task of Miconi et al. (2018/2019) used by the STPN paper (SPEC section 3).

Two independent implementations that must agree step for step:

- `MazeEnv`: one maze, plain Python (the reference, and what `gymnasium.make` returns);
- `MazeVectorEnv`: N mazes stepped with numpy in one call (the paper trains on 512 at once),
  the vector entry point of "stpn/Maze-v0" for `gymnasium.make_vec` and RLlib.

Randomness is drawn only at reset (the reward cell) and at a teleport, from one generator per
maze seeded like gymnasium's `SyncVectorEnv` does (`seed + i`), so that the vector env gives
exactly the trajectories of N single mazes for the same seeds and actions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from ._options import check_float, check_int, reject_unknown

MAZE_ID = "stpn/Maze-v0"
MAZE_OPTIONS: dict[str, Any] = {
    "size": 13,
    "episode_length": 200,
    "reward": 10.0,
    "wall_penalty": 0.0,
}
# Up, down, left, right as (row, column) moves.
MOVES = ((-1, 0), (1, 0), (0, -1), (0, 1))
OBS_SIZE = 17  # 9 neighbourhood + 4 extra inputs + 4 previous-action one-hot
_NEIGHBOURHOOD = slice(0, 9)
_STEP_FRACTION, _PREV_REWARD, _PREV_ACTION = 11, 12, 13


def maze_layout(size: int) -> np.ndarray:
    """Walls (True): the border, and every (r, c) with r and c both even except the centre."""
    walls = np.zeros((size, size), dtype=bool)
    walls[0, :] = walls[-1, :] = walls[:, 0] = walls[:, -1] = True
    walls[::2, ::2] = True
    walls[size // 2, size // 2] = False
    return walls


@dataclass(frozen=True)
class MazeParams:
    """Validated options plus everything derived from them once."""

    size: int = 13
    episode_length: int = 200
    reward: float = 10.0
    wall_penalty: float = 0.0
    walls: np.ndarray = field(init=False, repr=False, compare=False)
    free_cells: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int | np.integer):
            raise ValueError(f"{MAZE_ID}: size must be an odd integer >= 5, got {self.size!r}")
        if self.size < 5 or self.size % 2 == 0:
            raise ValueError(f"{MAZE_ID}: size must be an odd integer >= 5, got {self.size!r}")
        object.__setattr__(self, "size", int(self.size))
        length = check_int(MAZE_ID, "episode_length", self.episode_length, 1)
        object.__setattr__(self, "episode_length", length)
        object.__setattr__(self, "reward", check_float(MAZE_ID, "reward", self.reward))
        penalty = check_float(MAZE_ID, "wall_penalty", self.wall_penalty, minimum=0.0)
        object.__setattr__(self, "wall_penalty", penalty)
        walls = maze_layout(self.size)
        object.__setattr__(self, "walls", walls)
        # Flat (row-major) indices of the free cells: the reward cell and teleports draw from it.
        object.__setattr__(self, "free_cells", np.flatnonzero(~walls.ravel()))

    @property
    def centre(self) -> int:
        return self.size // 2

    def observation_space(self) -> gym.spaces.Box:
        """Bounds of the 17 floats; the previous reward is one of 0, reward and -wall_penalty."""
        low = np.zeros(OBS_SIZE, dtype=np.float32)
        high = np.ones(OBS_SIZE, dtype=np.float32)
        low[_PREV_REWARD] = min(0.0, self.reward, -self.wall_penalty)
        high[_PREV_REWARD] = max(0.0, self.reward, -self.wall_penalty)
        return gym.spaces.Box(low, high, dtype=np.float32)


def _draw_teleport(rng: np.random.Generator, n_free: int, reward_index: int) -> int:
    """Index into the free cells, uniform over all of them except the reward cell."""
    k = int(rng.integers(n_free - 1))
    return k + 1 if k >= reward_index else k


class MazeEnv(gym.Env):
    """One maze. Options: size (odd, >= 5), episode_length, reward, wall_penalty (>= 0).

    Observation (float32, 17): the 3x3 neighbourhood (1 = wall) row by row, then 0, 1,
    step / episode_length, the previous reward, then the previous action one-hot (zeros at reset).
    Actions: 0 up, 1 down, 2 left, 3 right. Episodes truncate after `episode_length` steps.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(
        self,
        *,
        size: int = 13,
        episode_length: int = 200,
        reward: float = 10.0,
        wall_penalty: float = 0.0,
        render_mode: str | None = None,
        **unknown: Any,
    ) -> None:
        reject_unknown(MAZE_ID, unknown, [*MAZE_OPTIONS, "render_mode"])
        self.params = MazeParams(size, episode_length, reward, wall_penalty)
        if render_mode not in (None, "ansi"):
            raise ValueError(f"{MAZE_ID}: render_mode must be None or 'ansi', got {render_mode!r}")
        self.render_mode = render_mode
        self.observation_space = self.params.observation_space()
        self.action_space = gym.spaces.Discrete(4)
        self._walls = self.params.walls
        self._free = [divmod(int(i), self.params.size) for i in self.params.free_cells]
        self._row = self._col = self.params.centre
        self._reward_index = 0
        self._reward_cell = self._free[0]
        self._step = 0
        self._last_reward = 0.0
        self._last_action = -1

    @property
    def agent_cell(self) -> tuple[int, int]:
        return self._row, self._col

    @property
    def reward_cell(self) -> tuple[int, int]:
        return self._reward_cell

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._reward_index = int(self.np_random.integers(len(self._free)))
        self._reward_cell = self._free[self._reward_index]
        self._row = self._col = self.params.centre
        self._step = 0
        self._last_reward = 0.0
        self._last_action = -1
        return self._observation(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        a = int(action)
        if not 0 <= a < 4:
            raise ValueError(f"{MAZE_ID}: action must be 0, 1, 2 or 3, got {action!r}")
        if self._step >= self.params.episode_length:
            raise RuntimeError(f"{MAZE_ID}: the episode was truncated; call reset() first")
        dr, dc = MOVES[a]
        row, col = self._row + dr, self._col + dc
        reward = 0.0
        if self._walls[row, col]:
            reward -= self.params.wall_penalty
        else:
            self._row, self._col = row, col
        if (self._row, self._col) == self._reward_cell:
            reward += self.params.reward
            k = _draw_teleport(self.np_random, len(self._free), self._reward_index)
            self._row, self._col = self._free[k]
        self._step += 1
        self._last_reward = reward
        self._last_action = a
        truncated = self._step >= self.params.episode_length
        return self._observation(), reward, False, truncated, {}

    def _observation(self) -> np.ndarray:
        obs = np.zeros(OBS_SIZE, dtype=np.float32)
        r, c = self._row, self._col
        obs[_NEIGHBOURHOOD] = self._walls[r - 1 : r + 2, c - 1 : c + 2].ravel()
        obs[10] = 1.0
        obs[_STEP_FRACTION] = self._step / self.params.episode_length
        obs[_PREV_REWARD] = self._last_reward
        if self._last_action >= 0:
            obs[_PREV_ACTION + self._last_action] = 1.0
        return obs

    def render(self) -> str | None:
        """Text picture: '#' wall, '.' free, 'R' reward, 'A' agent (the agent is never on R)."""
        if self.render_mode != "ansi":
            return None
        rows = [["#" if w else "." for w in line] for line in self._walls]
        rows[self._reward_cell[0]][self._reward_cell[1]] = "R"
        rows[self._row][self._col] = "A"
        header = (
            f"step {self._step}/{self.params.episode_length}, last reward {self._last_reward:g}"
        )
        return header + "\n" + "\n".join("".join(line) for line in rows) + "\n"


class MazeVectorEnv(VectorEnv):
    """`num_envs` mazes stepped together with numpy; same options as `MazeEnv`.

    Autoreset is gymnasium's default next-step mode (what RLlib's env runner expects): the step
    after a truncation resets that maze, ignores its action and returns reward 0.
    """

    metadata = {"render_modes": [], "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(
        self,
        num_envs: int = 1,
        *,
        size: int = 13,
        episode_length: int = 200,
        reward: float = 10.0,
        wall_penalty: float = 0.0,
        **unknown: Any,
    ) -> None:
        reject_unknown(MAZE_ID, unknown, ["num_envs", *MAZE_OPTIONS])
        self.num_envs = check_int(MAZE_ID, "num_envs", num_envs, 1)
        self.params = p = MazeParams(size, episode_length, reward, wall_penalty)
        self.single_observation_space = p.observation_space()
        self.single_action_space = gym.spaces.Discrete(4)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        # Flat-index geometry: a move adds a delta; the neighbourhood is a fixed set of offsets.
        self._walls = p.walls.ravel()
        self._deltas = np.array([dr * p.size + dc for dr, dc in MOVES], dtype=np.int64)
        # Observation rows are gathered from tables: per cell (neighbourhood, 0, 1, zeros) and
        # per previous action (+1, so that row 0 is "no action yet") the one-hot.
        offsets = np.array([dr * p.size + dc for dr in (-1, 0, 1) for dc in (-1, 0, 1)])
        free = p.free_cells  # the agent is only ever on a free (hence inner) cell
        self._cell_rows = np.zeros((p.size * p.size, OBS_SIZE), dtype=np.float32)
        self._cell_rows[free, _NEIGHBOURHOOD] = self._walls[free[:, None] + offsets]
        self._cell_rows[:, 10] = 1.0
        self._onehot = np.eye(5, 4, k=-1, dtype=np.float32)
        self._free = p.free_cells.astype(np.int64)
        self._start = p.centre * p.size + p.centre
        n = self.num_envs
        self._rngs: list[np.random.Generator | None] = [None] * n
        self._pos = np.full(n, self._start, dtype=np.int64)
        self._reward_index = np.zeros(n, dtype=np.int64)
        self._reward_pos = np.zeros(n, dtype=np.int64)
        self._step = np.zeros(n, dtype=np.int64)
        self._last_reward = np.zeros(n, dtype=np.float64)
        self._last_action = np.full(n, -1, dtype=np.int64)
        self._autoreset = np.zeros(n, dtype=bool)

    @property
    def agent_cells(self) -> np.ndarray:
        """(num_envs, 2) rows and columns of the agents."""
        return np.stack(np.divmod(self._pos, self.params.size), axis=1)

    @property
    def reward_cells(self) -> np.ndarray:
        """(num_envs, 2) rows and columns of the reward cells."""
        return np.stack(np.divmod(self._reward_pos, self.params.size), axis=1)

    def reset(
        self,
        *,
        seed: int | list[int | None] | None = None,
        options: dict[str, Any] | None = None,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        n = self.num_envs
        if seed is None:
            seeds: list[int | None] = [None] * n
        elif isinstance(seed, int | np.integer):
            seeds = [int(seed) + i for i in range(n)]
        else:
            seeds = list(seed)
            if len(seeds) != n:
                raise ValueError(f"{MAZE_ID}: got {len(seeds)} seeds for num_envs={n}")
        mask = np.ones(n, dtype=bool)
        if options and "reset_mask" in options:
            mask = np.asarray(options["reset_mask"], dtype=bool)
            if mask.shape != (n,):
                raise ValueError(f"{MAZE_ID}: reset_mask must have shape ({n},), got {mask.shape}")
        for i in np.flatnonzero(mask):
            if seeds[i] is not None or self._rngs[i] is None:
                self._rngs[i], _ = seeding.np_random(seeds[i])
        self._reset_mazes(np.flatnonzero(mask))
        return self._observations(), {}

    def _reset_mazes(self, indices: np.ndarray) -> None:
        n_free = len(self._free)
        for i in indices:
            k = int(self._rngs[i].integers(n_free))
            self._reward_index[i] = k
            self._reward_pos[i] = self._free[k]
        self._pos[indices] = self._start
        self._step[indices] = 0
        self._last_reward[indices] = 0.0
        self._last_action[indices] = -1
        self._autoreset[indices] = False

    def step(
        self, actions: Any
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        if self._rngs[0] is None:
            raise RuntimeError(f"{MAZE_ID}: call reset() before step()")
        acts = np.asarray(actions).reshape(-1)
        if acts.shape != (self.num_envs,) or not np.issubdtype(acts.dtype, np.integer):
            raise ValueError(
                f"{MAZE_ID}: actions must be {self.num_envs} integers, got {np.asarray(actions)!r}"
            )
        if acts.min() < 0 or acts.max() > 3:
            raise ValueError(f"{MAZE_ID}: actions must be in 0..3, got {acts!r}")
        p = self.params
        resetting = self._autoreset
        moved = self._pos + self._deltas[acts]
        blocked = self._walls[moved]
        pos = np.where(blocked, self._pos, moved)
        hit = pos == self._reward_pos
        rewards = np.where(blocked, -p.wall_penalty, 0.0) + np.where(hit, p.reward, 0.0)
        n_free = len(self._free)
        for i in np.flatnonzero(hit & ~resetting):
            k = _draw_teleport(self._rngs[i], n_free, int(self._reward_index[i]))
            pos[i] = self._free[k]
        self._pos = pos
        self._step += 1
        self._last_reward = rewards
        self._last_action = acts.astype(np.int64)
        truncated = self._step >= p.episode_length
        if resetting.any():
            idx = np.flatnonzero(resetting)
            self._reset_mazes(idx)
            rewards[idx] = 0.0
            truncated[idx] = False
        self._autoreset = truncated.copy()
        terminated = np.zeros(self.num_envs, dtype=bool)
        return self._observations(), rewards.copy(), terminated, truncated, {}

    def _observations(self) -> np.ndarray:
        obs = self._cell_rows[self._pos]
        obs[:, _STEP_FRACTION] = self._step / self.params.episode_length
        obs[:, _PREV_REWARD] = self._last_reward
        obs[:, _PREV_ACTION:] = self._onehot[self._last_action + 1]
        return obs
