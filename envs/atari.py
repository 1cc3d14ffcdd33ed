"""Atari games with the preprocessing of SPEC section 3 (Mnih et al. 2016, no frame stacking).

ALE v5 game with no sticky actions and the minimal action set, frame skipping done by gymnasium's
`AtariPreprocessing` (action repeat with a max over the last two frames, grayscale, resize, noop
starts). Observations are uint8 and channels-last: (size, size, frame_stack).
`ale_py` and `cv2` (the `[atari]` extra) are imported only when an env is made.
"""

from __future__ import annotations

import difflib
from collections import deque
from typing import Any

import gymnasium as gym
import numpy as np

from rllib_stpn._extras import require

from ._options import check_int, reject_unknown

ATARI_ID = "stpn/Atari-v0"
PONG_ID = "stpn/Pong-v0"
ATARI_OPTIONS: dict[str, Any] = {
    "game": "Pong",
    "frame_skip": 4,
    "screen_size": 84,
    "noop_max": 30,
    "frame_stack": 1,
}


def atari_games() -> list[str]:
    """Names accepted as `game`: every ALE game that gymnasium registers as "ALE/<name>-v5"."""
    gym.register_envs(require("ale_py", "atari", "the Atari envs"))
    return sorted(
        k[len("ALE/") : -len("-v5")]
        for k in gym.registry
        if k.startswith("ALE/") and k[-3:] == "-v5"
    )


class ChannelFrameStack(gym.Wrapper):
    """Stacks the last `k` (H, W, 1) frames along the channel axis -> (H, W, k).

    At reset the stack is filled with copies of the first frame. Channels-last is what the
    package's CNN encoder expects (gymnasium's FrameStackObservation stacks in front instead).
    """

    def __init__(self, env: gym.Env, k: int) -> None:
        super().__init__(env)
        space = env.observation_space
        assert isinstance(space, gym.spaces.Box) and space.shape[-1] == 1
        self._k = k
        self._frames: deque[np.ndarray] = deque(maxlen=k)
        self.observation_space = gym.spaces.Box(
            low=0, high=255, shape=(*space.shape[:-1], k), dtype=np.uint8
        )

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        for _ in range(self._k):
            self._frames.append(obs)
        return self._stacked(), info

    def step(self, action: Any) -> tuple[np.ndarray, Any, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._frames.append(obs)
        return self._stacked(), reward, terminated, truncated, info

    def _stacked(self) -> np.ndarray:
        return np.concatenate(list(self._frames), axis=-1)


def make_atari(
    *,
    game: str = "Pong",
    frame_skip: int = 4,
    screen_size: int = 84,
    noop_max: int = 30,
    frame_stack: int = 1,
    render_mode: str | None = None,
    _env_id: str = ATARI_ID,
    **unknown: Any,
) -> gym.Env:
    """The preprocessed Atari env of "stpn/Atari-v0"; see the module docstring."""
    valid = list(ATARI_OPTIONS) if _env_id == ATARI_ID else list(ATARI_OPTIONS)[1:]
    reject_unknown(_env_id, unknown, [*valid, "render_mode"])
    frame_skip = check_int(_env_id, "frame_skip", frame_skip, 1)
    screen_size = check_int(_env_id, "screen_size", screen_size, 8)
    noop_max = check_int(_env_id, "noop_max", noop_max, 0)
    frame_stack = check_int(_env_id, "frame_stack", frame_stack, 1)
    gym.register_envs(require("ale_py", "atari", _env_id))
    require("cv2", "atari", _env_id)  # AtariPreprocessing resizes with OpenCV
    base_id = f"ALE/{game}-v5" if isinstance(game, str) else None
    if base_id not in gym.registry:
        close = difflib.get_close_matches(str(game), atari_games(), n=3)
        hint = f"did you mean {', '.join(map(repr, close))}? " if close else ""
        raise ValueError(
            f"{_env_id}: unknown Atari game {game!r}; {hint}"
            "see rllib_stpn.envs.atari.atari_games() for the valid names"
        )
    # Frame skipping happens in AtariPreprocessing (max-pool over the last two frames), so the
    # ALE env must not skip itself; repeat_action_probability=0 gives NoFrameskip-v4 semantics.
    env = gym.make(
        base_id,
        frameskip=1,
        repeat_action_probability=0.0,
        full_action_space=False,
        render_mode=render_mode,
        disable_env_checker=True,
    )
    env = gym.wrappers.AtariPreprocessing(
        env,
        noop_max=noop_max,
        frame_skip=frame_skip,
        screen_size=screen_size,
        terminal_on_life_loss=False,
        grayscale_obs=True,
        grayscale_newaxis=True,
        scale_obs=False,
    )
    if frame_stack > 1:
        env = ChannelFrameStack(env, frame_stack)
    return env


def make_pong(**options: Any) -> gym.Env:
    """ "stpn/Pong-v0": `make_atari` with the game fixed to Pong (all other options allowed)."""
    if "game" in options or "_env_id" in options:
        extra = {k: options[k] for k in ("game", "_env_id") if k in options}
        reject_unknown(PONG_ID, extra, [*list(ATARI_OPTIONS)[1:], "render_mode"])
    return make_atari(**options, game="Pong", _env_id=PONG_ID)
