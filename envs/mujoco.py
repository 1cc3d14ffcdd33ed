"""MuJoCo tasks of gymnasium (SPEC section 3 uses InvertedPendulum, v5 instead of the paper's v2).

`mujoco` (the `[mujoco]` extra) is imported only when an env is made.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from rllib_stpn._extras import require

from ._options import reject_unknown

MUJOCO_ID = "stpn/MuJoCo-v0"
INVERTED_PENDULUM_ID = "stpn/InvertedPendulum-v0"
MUJOCO_OPTIONS: dict[str, Any] = {"task": "InvertedPendulum-v5"}


def mujoco_tasks() -> list[str]:
    """Ids accepted as `task`: gymnasium's registered MuJoCo environments."""
    return sorted(
        env_id
        for env_id, spec in gym.registry.items()
        if isinstance(spec.entry_point, str)
        and spec.entry_point.startswith("gymnasium.envs.mujoco")
    )


def make_mujoco(
    *,
    task: str = "InvertedPendulum-v5",
    render_mode: str | None = None,
    _env_id: str = MUJOCO_ID,
    **unknown: Any,
) -> gym.Env:
    """The gymnasium MuJoCo task `task`, with its own time limit (1000 steps for the pendulum)."""
    valid = [*MUJOCO_OPTIONS, "render_mode"] if _env_id == MUJOCO_ID else ["render_mode"]
    reject_unknown(_env_id, unknown, valid)
    tasks = mujoco_tasks()
    if task not in tasks:
        raise ValueError(
            f"{_env_id}: unknown MuJoCo task {task!r}; valid tasks: {', '.join(tasks)}"
        )
    require("mujoco", "mujoco", _env_id)
    require("imageio", "mujoco", _env_id)  # gymnasium's MuJoCo envs import it when built
    return gym.make(task, render_mode=render_mode, disable_env_checker=True)


def make_inverted_pendulum(**options: Any) -> gym.Env:
    """ "stpn/InvertedPendulum-v0": gymnasium's InvertedPendulum-v5 (only `render_mode` allowed)."""
    if "task" in options or "_env_id" in options:
        extra = {k: options[k] for k in ("task", "_env_id") if k in options}
        reject_unknown(INVERTED_PENDULUM_ID, extra, ["render_mode"])
    return make_mujoco(**options, task="InvertedPendulum-v5", _env_id=INVERTED_PENDULUM_ID)
