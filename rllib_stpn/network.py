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
    mlp_layers,
)

State = dict[str, torch.Tensor]

# Prefix of the value branch's state keys when `value_branch` is "separate".
VF_STATE_PREFIX = "vf_"


def build_head(input_size: int, output_size: int, hiddens: list[int], activation: str) -> nn.Module:
    """A linear layer (no `hiddens`: the paper's read-out), else an MLP with a linear output."""
    if not hiddens:
        return nn.Linear(input_size, output_size)
    return nn.Sequential(
        *mlp_layers(input_size, hiddens, activation), nn.Linear(hiddens[-1], output_size)
    )


class STPNNetwork(nn.Module):
    """Observation encoder, memory core, policy head `pi` and value head `vf`.

    By default the policy and value heads are linear read-outs of the same core output (the
    paper's actor-critic: one network, two linear read-outs). With `value_branch` "separate"
    the value head reads its own `vf_encoder` and `vf_core` instead. `model_config` takes the
    keys of `rllib_stpn.model_config.DEFAULT_MODEL_CONFIG`.
    """

    encoder: Encoder
    core: MemoryCore
    pi: nn.Module
    vf: nn.Module
    vf_encoder: Encoder | None
    vf_core: MemoryCore | None
    # A user's `vf_share_layers=False` is refused where it can be told from the one RLlib
    # injects (`rllib_stpn.model_config.check_vf_share_layers`); `value_branch` selects.
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
        """Create `encoder`, `core`, `pi`, `vf` (and `vf_encoder`, `vf_core`) on `self`;
        returns the completed config."""
        cfg = validate_model_config(model_config)
        self.encoder, self.core = _build_trunk(observation_space, cfg)
        H, hiddens, act = cfg["hidden_size"], cfg["head_hiddens"], cfg["head_activation"]
        self.pi = build_head(H, num_outputs, hiddens, act)
        self.vf = build_head(H, 1, hiddens, act)
        self.vf_encoder = self.vf_core = None
        if cfg["value_branch"] == "separate":
            self.vf_encoder, self.vf_core = _build_trunk(observation_space, cfg)
        return cfg

    @property
    def is_recurrent(self) -> bool:
        """Whether the core has a state (every core but "mlp")."""
        return bool(self.state_shapes())

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-sample state shapes: the core's, then the value core's under "vf_" keys."""
        shapes = dict(self.core.state_shapes())
        if self.vf_core is not None:
            shapes.update({VF_STATE_PREFIX + k: s for k, s in self.vf_core.state_shapes().items()})
        return shapes

    def embed_value(
        self, obs: torch.Tensor, state: State | None = None, *, seq_lens: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, State]:
        """The separate value branch: obs (B, T, ...) -> its core output (B, T, H) and its next
        state under "vf_" keys. `state` may hold the policy core's keys too (ignored)."""
        if self.vf_encoder is None or self.vf_core is None:
            raise RuntimeError("embed_value needs model_config['value_branch'] == 'separate'")
        n = len(VF_STATE_PREFIX)
        vf_state = {k[n:]: v for k, v in (state or {}).items() if k.startswith(VF_STATE_PREFIX)}
        out, vf_state, _ = self.vf_core(
            self.vf_encoder(obs, seq_lens), vf_state or None, seq_lens=seq_lens
        )
        return out, {VF_STATE_PREFIX + k: v for k, v in vf_state.items()}

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
        rest). `encoder` and `core` replace this network's own (APPO's target copies). The
        value branch's "vf_" state keys, if any, are left out of `state` and of the result.
        """
        encoder = self.encoder if encoder is None else encoder
        core = self.core if core is None else core
        if state and self.vf_core is not None:
            state = {k: v for k, v in state.items() if not k.startswith(VF_STATE_PREFIX)}
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
        emb, new_state, power = self.embed(obs, state, seq_lens=seq_lens, return_power=return_power)
        vf_emb = emb
        if self.vf_core is not None:
            vf_emb, vf_state = self.embed_value(obs, state, seq_lens=seq_lens)
            new_state = {**new_state, **vf_state}
        return self.pi(emb), self.vf(vf_emb).squeeze(-1), new_state, power


def _build_trunk(observation_space: gym.Space, cfg: dict[str, Any]) -> tuple[Encoder, MemoryCore]:
    """The encoder and the memory core of a validated model_config."""
    encoder = build_encoder(
        cfg["encoder"], observation_space, cfg["encoder_hiddens"], cfg["encoder_activation"]
    )
    core = build_core(
        cfg["core"],
        encoder.output_size,
        cfg["hidden_size"],
        plasticity=cfg["plasticity"],
        normalize=cfg["normalize"],
        f_clamp=cfg["f_clamp"],
        post_update_norm=cfg["post_update_norm"],
        weight_init=cfg["weight_init"],
    )
    return encoder, core


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
