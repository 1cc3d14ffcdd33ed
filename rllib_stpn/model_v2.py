"""STPNModelV2: the network of `rllib_stpn.network` (the same as STPNModel's), as an
old-API-stack ModelV2.

Registered as the custom model "stpn" by `rllib_stpn.register()` (called on first use of an
RLlib-facing name of the package, by the `rllib` command and the YAML path):

    config.training(model={"custom_model": "stpn", "max_seq_len": 20,
                           "custom_model_config": {"core": "stpn", "hidden_size": 64}})
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from ray.rllib.models import ModelCatalog
from ray.rllib.models.modelv2 import ModelV2
from ray.rllib.models.torch.recurrent_net import RecurrentNetwork
from ray.rllib.utils.annotations import override
from torch import nn

from rllib_stpn.network import STPNNetwork

CUSTOM_MODEL_NAME = "stpn"


class STPNModelV2(RecurrentNetwork, STPNNetwork):
    """Old-stack recurrent model; `custom_model_config` takes the keys of STPNModel's
    model_config. The state is the list of the core's state tensors in the order of
    `get_initial_state()`: [h, F flattened] for the STPN cores, [h, c] for "lstm", [h] for
    "gru" and "rnn", [] for "mlp", and the keys of `core.state_shapes()` in order for the
    plastic cores (e.g. [h, A flattened] for "fastweights"). The BPTT length is the old stack's own
    `model["max_seq_len"]`.
    """

    def __init__(
        self,
        obs_space: gym.Space,
        action_space: gym.Space,
        num_outputs: int,
        model_config: dict[str, Any],
        name: str,
        **custom_model_kwargs: Any,
    ) -> None:
        nn.Module.__init__(self)
        super().__init__(obs_space, action_space, num_outputs, model_config, name)
        custom = {**(model_config.get("custom_model_config") or {}), **custom_model_kwargs}
        outer_len = model_config.get("max_seq_len")
        if "max_seq_len" in custom and outer_len is not None and custom["max_seq_len"] != outer_len:
            raise ValueError(
                f"custom_model_config['max_seq_len']={custom['max_seq_len']} differs from "
                f"model['max_seq_len']={outer_len}; the old stack uses model['max_seq_len']"
            )
        # The old stack hands over flattened, preprocessed observations; the encoder sees them
        # in the env's original shape (e.g. (84, 84, 1) frames for the CNN).
        self._obs_space = getattr(obs_space, "original_space", obs_space)
        self.cfg = self.build_network(self._obs_space, num_outputs, custom)
        if self.cfg["action_dist"] != "default":
            raise ValueError(
                f"model_config['action_dist']={self.cfg['action_dist']!r} is for STPNModel (new "
                "API stack); on the old stack set model['custom_action_dist'] instead"
            )
        if self.vf_core is not None:
            raise ValueError(
                "custom_model_config['value_branch']='separate' needs the new API stack "
                "(STPNModel); STPNModelV2 allows 'shared' only"
            )
        self._state_keys = list(self.core.state_shapes())
        self._value: torch.Tensor | None = None

    @override(ModelV2)
    def get_initial_state(self) -> list[torch.Tensor]:
        ref = next(self.pi.parameters())
        return [ref.new_zeros(s) for s in self.core.state_shapes().values()]

    @override(ModelV2)
    def forward(
        self, input_dict: dict[str, Any], state: list[torch.Tensor], seq_lens: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if self._state_keys:
            return super().forward(input_dict, state, seq_lens)
        # Stateless ("mlp" core): no time axis on the old stack.
        logits, _ = self.forward_rnn(input_dict["obs_flat"].float().unsqueeze(1), [], None)
        return logits.reshape(-1, self.num_outputs), []

    @override(RecurrentNetwork)
    def forward_rnn(
        self, inputs: torch.Tensor, state: list[torch.Tensor], seq_lens: torch.Tensor | None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        B, T = inputs.shape[:2]
        obs = inputs.reshape(B, T, *self._obs_space.shape)
        if self._obs_space.dtype == np.uint8:
            obs = obs.to(torch.uint8)  # preprocessors give float frames; the encoder scales uint8
        out, new_state, _ = self.embed(obs, dict(zip(self._state_keys, state)), seq_lens=seq_lens)
        self._value = self.vf(out).reshape(-1)
        return self.pi(out), [new_state[k] for k in self._state_keys]

    @override(ModelV2)
    def value_function(self) -> torch.Tensor:
        if self._value is None:
            raise RuntimeError("call forward() before value_function()")
        return self._value


def register() -> None:
    """Register STPNModelV2 as the old-stack custom model "stpn" (see `rllib_stpn.register`)."""
    ModelCatalog.register_custom_model(CUSTOM_MODEL_NAME, STPNModelV2)
