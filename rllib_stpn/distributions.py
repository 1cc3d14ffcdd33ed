"""Action distributions selectable with model_config["action_dist"].

"softplus_gaussian" is the STPN authors' InvertedPendulum distribution
(`TorchDiagGaussianClipped` in AtariMujoco/rllib_nets.py of github NeuromorphicComputing/stpn):
a diagonal Gaussian whose policy head gives the mean and, in its second half, a raw value
whose softplus is the standard deviation, where RLlib's default exponentiates a log-std.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import torch
from ray.rllib.core.distribution.torch.torch_distribution import TorchDiagGaussian

from rllib_stpn.model_config import ACTION_DISTS


class TorchSoftplusGaussian(TorchDiagGaussian):
    """Diagonal Gaussian N(mean, softplus(x)^2) from inputs [mean, x] (x: pre-softplus std).

    Softplus grows linearly where exp explodes and approaches 0 like exp(x) from below, so a
    large head output cannot blow up the std; the gradient of the std w.r.t. x is sigmoid(x).
    """

    @classmethod
    def from_logits(cls, logits: torch.Tensor, **kwargs: Any) -> TorchSoftplusGaussian:
        loc, raw_std = logits.chunk(2, dim=-1)
        return cls(loc=loc, scale=torch.nn.functional.softplus(raw_std))


def action_dist_class(name: str, action_space: gym.Space) -> type | None:
    """The distribution class for model_config["action_dist"], or None for RLlib's default
    (Categorical for Discrete, log-std DiagGaussian for Box)."""
    if name == "default":
        return None
    if name == "softplus_gaussian":
        if not (isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1):
            raise ValueError(
                f"model_config['action_dist']='softplus_gaussian' needs a 1-D Box action space, "
                f"got {action_space}"
            )
        return TorchSoftplusGaussian
    raise ValueError(f"model_config['action_dist'] must be one of {ACTION_DISTS}, got {name!r}")
