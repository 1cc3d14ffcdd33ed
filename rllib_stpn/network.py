"""The one network of STPNModel (new API stack) and STPNModelV2 (old): encoder -> core -> heads.

Plain torch, no RLlib: `STPNNetwork(observation_space, num_outputs, model_config)` runs on its
own. The two RLlib wrappers inherit it and call `build_network` in their own set-up, so that the
parts are their direct children: their parameters keep the names "encoder.*", "core.*", "pi.*"
and "vf.*", and APPO's target copies are made of the very same modules.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import torch
from torch import nn

from rllib_stpn.model_config import validate_model_config
from rllib_stpn.nn.cores import (
    Encoder,
    MemoryCore,
    action_dist_input_size,
    build_core,
    build_encoder,
)

State = dict[str, torch.Tensor]


class STPNNetwork(nn.Module):
    """Observation encoder, memory core, linear policy head `pi` and linear value head `vf`.

    The policy and value heads read the same core output (the paper's actor-critic: one
    network, two linear read-outs). `model_config` takes the keys of
    `rllib_stpn.model_config.DEFAULT_MODEL_CONFIG`.
    """

    encoder: Encoder
    core: MemoryCore
    pi: nn.Linear
    vf: nn.Linear
    # Always: a user's `vf_share_layers=False` is rejected where it can be told from the one
    # RLlib injects (`rllib_stpn.model_config.check_vf_share_layers`).
    shares_value_layers = True

    def __init__(
        self,
        observation_space: gym.Space,
        num_outputs: int,
        model_config: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.model_config = self.build_network(observation_space, num_outputs, model_config)

    def build_network(
        self,
        observation_space: gym.Space,
        num_outputs: int,
        model_config: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        """Create `encoder`, `core`, `pi` and `vf` on `self`; returns the completed config."""
        cfg = validate_model_config(model_config)
        self.encoder = build_encoder(cfg["encoder"], observation_space, cfg["encoder_hiddens"])
        self.core = build_core(
            cfg["core"],
            self.encoder.output_size,
            cfg["hidden_size"],
            plasticity=cfg["plasticity"],
            normalize=cfg["normalize"],
            f_clamp=cfg["f_clamp"],
            post_update_norm=cfg["post_update_norm"],
            weight_init=cfg["weight_init"],
        )
        self.pi = nn.Linear(cfg["hidden_size"], num_outputs)
        self.vf = nn.Linear(cfg["hidden_size"], 1)
        return cfg

    @property
    def is_recurrent(self) -> bool:
        """Whether the core has a state (every core but "mlp")."""
        return bool(self.core.state_shapes())

    def embed(
        self,
        obs: torch.Tensor,
        state: State | None = None,
        *,
        seq_lens: torch.Tensor | None = None,
        return_power: bool = False,
        encoder: Encoder | None = None,
        core: MemoryCore | None = None,
    ) -> tuple[torch.Tensor, State, torch.Tensor | None]:
        """obs (B, T, *obs_shape) -> core output (B, T, H), next state, power (B, T) or None.

        `seq_lens` (B,): valid steps per row of zero-padded obs (encoder and core may skip the
        rest). `encoder` and `core` replace this network's own (APPO's target copies).
        """
        encoder = self.encoder if encoder is None else encoder
        core = self.core if core is None else core
        x = encoder(obs, seq_lens)
        return core(x, state, return_power=return_power, seq_lens=seq_lens)

    def forward(
        self,
        obs: torch.Tensor,
        state: State | None = None,
        *,
        seq_lens: torch.Tensor | None = None,
        return_power: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, State, torch.Tensor | None]:
        """obs (B, T, *obs_shape) -> policy outputs (B, T, num_outputs), values (B, T), next
        state and power (B, T) or None."""
        emb, state, power = self.embed(obs, state, seq_lens=seq_lens, return_power=return_power)
        return self.pi(emb), self.vf(emb).squeeze(-1), state, power


def count_model_parameters(
    observation_space: gym.Space,
    action_space: gym.Space,
    model_config: Mapping[str, Any] | None = None,
) -> int:
    """Trainable parameters of the whole STPNModel (encoder, core and both heads), counted on
    a network built on the meta device (no memory, no initialisation cost)."""
    with torch.device("meta"):
        net = STPNNetwork(observation_space, action_dist_input_size(action_space), model_config)
    return sum(p.numel() for p in net.parameters() if p.requires_grad)
