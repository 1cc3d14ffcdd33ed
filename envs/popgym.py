"""POPGym (Morad et al., ICLR 2023) environments by id: "popgym/RepeatPreviousEasy-v0", ...

`popgym` (the `[popgym]` extra, popgym==1.0.7) is imported only when an env is made. Every id
is a POPGym class (`popgym.envs.<Task>`) made as it is, then wrapped so that the encoders here
can take it, without changing the task (its dynamics, rewards and episode ends):

- `FreshInfo`: a deep copy of the info dict on every reset and step. CountRecall hands back
  its own `counts` array in the info and then keeps counting into it, so an info kept from an
  earlier step (by a checker, a logger or RLlib's episode) changes under its holder.
- `PreviousAction` (option `previous_action`, on by default): the previous action and a
  first-step flag are appended to the observation. This is the protocol of POPGym's own
  baselines (popgym/baselines/ppo.py wraps every env in `Antialias(PreviousAction(env))`: the
  null action, 0 or the action space's low, at reset, and a flag that is 1 on the first step
  only, so the null action is not mistaken for a real one).
- `FlatFloatObservation`: Discrete, MultiDiscrete, MultiBinary, Box and Tuple observations
  become one float32 vector, categorical parts one-hot (gymnasium's `flatten`).
- No render modes: the control tasks list gymnasium's CartPole/Pendulum ones, but POPGym's
  classes refuse a `render_mode`, so gymnasium's checker failed on them.
- `DiscreteAction`: a MultiDiscrete action space (Battleship, MineSweeper) becomes one
  Discrete over every combination, as the models here take Discrete or 1-D Box actions.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
from typing import Any

import gymnasium as gym
import numpy as np

from rllib_stpn._extras import MissingExtraError, require

from ._options import reject_unknown

# POPGym 1.0.7's task families; each comes at Easy, Medium and Hard. The Labyrinth ones also
# need mazelib (popgym's own `navigation` extra).
POPGYM_FAMILIES: tuple[str, ...] = (
    "Autoencode",
    "Battleship",
    "Concentration",
    "CountRecall",
    "HigherLower",
    "LabyrinthEscape",
    "LabyrinthExplore",
    "MineSweeper",
    "MultiarmedBandit",
    "NoisyPositionOnlyCartPole",
    "NoisyPositionOnlyPendulum",
    "PositionOnlyCartPole",
    "PositionOnlyPendulum",
    "RepeatFirst",
    "RepeatPrevious",
    "VelocityOnlyCartPole",
)
DIFFICULTIES: tuple[str, ...] = ("Easy", "Medium", "Hard")
# id -> POPGym class name, e.g. "popgym/RepeatPreviousEasy-v0" -> "RepeatPreviousEasy".
POPGYM_TASKS: dict[str, str] = {
    f"popgym/{family}{level}-v0": f"{family}{level}"
    for family in POPGYM_FAMILIES
    for level in DIFFICULTIES
}
POPGYM_IDS: tuple[str, ...] = tuple(POPGYM_TASKS)
POPGYM_OPTIONS: dict[str, Any] = {"previous_action": True}


class FreshInfo(gym.Wrapper):
    """Hands back a deep copy of the env's info dict: nothing in it is shared between steps."""

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        return obs, copy.deepcopy(info)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward, terminated, truncated, copy.deepcopy(info)


def null_action(action_space: gym.Space) -> Any:
    """The action shown before the first step: 0 where the space holds it, else its lowest."""
    if isinstance(action_space, gym.spaces.Discrete):
        return int(action_space.start)
    if isinstance(action_space, gym.spaces.MultiDiscrete | gym.spaces.MultiBinary):
        return np.zeros(action_space.shape, action_space.dtype)
    if isinstance(action_space, gym.spaces.Box):
        zero = np.zeros(action_space.shape, action_space.dtype)
        return zero if action_space.contains(zero) else action_space.low.copy()
    raise ValueError(f"no null action for action space {action_space}")


class PreviousAction(gym.ObservationWrapper):
    """Observation -> (observation, previous action, first-step flag) as a Tuple space."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.observation_space = gym.spaces.Tuple(
            (env.observation_space, env.action_space, gym.spaces.Discrete(2))
        )
        self._null = null_action(env.action_space)
        self._previous, self._first = self._null, True

    def reset(self, **kwargs):
        self._previous, self._first = self._null, True
        return super().reset(**kwargs)

    def step(self, action):
        self._previous = action  # before the step: observation() shows it with its result
        return super().step(action)

    def observation(self, observation):
        first, self._first = self._first, False
        return (observation, self._previous, int(first))


class FlatFloatObservation(gym.ObservationWrapper):
    """Any Discrete/MultiDiscrete/MultiBinary/Box/Tuple observation -> one float32 vector."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self._space = env.observation_space
        flat = gym.spaces.flatten_space(self._space)
        self.observation_space = gym.spaces.Box(
            flat.low.astype(np.float32), flat.high.astype(np.float32), dtype=np.float32
        )

    def observation(self, observation):
        return gym.spaces.flatten(self._space, observation).astype(np.float32)


class DiscreteAction(gym.ActionWrapper):
    """MultiDiscrete(nvec) actions -> Discrete(prod(nvec)), index in C order."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self._nvec = tuple(int(n) for n in env.action_space.nvec.ravel())
        self._shape = env.action_space.shape
        self.action_space = gym.spaces.Discrete(int(np.prod(self._nvec)))

    def action(self, action):
        index = np.unravel_index(int(action), self._nvec)
        return np.asarray(index, dtype=self.env.action_space.dtype).reshape(self._shape)


def make_popgym(
    *,
    task: str,
    previous_action: bool = True,
    render_mode: str | None = None,
    _env_id: str | None = None,
    **unknown: Any,
) -> gym.Env:
    """The POPGym env `task` (a class name, e.g. "RepeatPreviousEasy") as a flat float32
    observation vector, previous action and first-step flag included unless
    `previous_action=False`; MultiDiscrete actions as one Discrete."""
    env_id = _env_id or f"popgym/{task}-v0"
    reject_unknown(env_id, unknown, [*POPGYM_OPTIONS, "render_mode"])
    if task not in POPGYM_TASKS.values():
        raise ValueError(f"{env_id}: unknown POPGym task {task!r}; e.g. RepeatPreviousEasy")
    if _env_id is not None and POPGYM_TASKS.get(_env_id) != task:
        raise ValueError(f"{env_id}: the id fixes the task; valid options are: previous_action")
    if not isinstance(previous_action, bool):
        raise ValueError(
            f"{env_id}: previous_action must be True or False, got {previous_action!r}"
        )
    if render_mode is not None:
        raise ValueError(f"{env_id}: POPGym envs render no frames; render_mode must be None")
    require("popgym", "popgym", env_id)
    envs = importlib.import_module("popgym.envs")
    if task.startswith("Labyrinth") and importlib.util.find_spec("mazelib") is None:
        raise MissingExtraError(
            f"{env_id} needs mazelib, POPGym's navigation dependency (not in rllib-stpn's "
            "extras): pip install 'popgym[navigation]==1.0.7'"
        )
    env: gym.Env = FreshInfo(getattr(envs, task)())
    if isinstance(env.action_space, gym.spaces.MultiDiscrete):
        env = DiscreteAction(env)
    if previous_action:
        env = PreviousAction(env)
    env = FlatFloatObservation(env)
    # The control tasks inherit gymnasium's CartPole/Pendulum render modes, but POPGym's classes
    # take no render_mode: say that none is offered, so that no checker asks for one.
    env.metadata = {**env.metadata, "render_modes": []}
    return env
