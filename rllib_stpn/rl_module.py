"""STPNModel: the network of `rllib_stpn.network` (encoder -> memory core -> policy and value
heads, linear by default) as an RLlib RLModule."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.learner.utils import make_target_network
from ray.rllib.core.rl_module.apis import (
    TARGET_NETWORK_ACTION_DIST_INPUTS,
    InferenceOnlyAPI,
    TargetNetworkAPI,
)
from ray.rllib.core.rl_module.apis.value_function_api import ValueFunctionAPI
from ray.rllib.core.rl_module.torch import TorchRLModule
from ray.rllib.utils.annotations import override
from torch import nn

from rllib_stpn.distributions import action_dist_class
from rllib_stpn.metrics import SYNAPTIC_POWER
from rllib_stpn.network import VF_STATE_PREFIX, STPNNetwork
from rllib_stpn.nn.cores import action_dist_input_size


def _row_lengths(batch: dict[str, Any], obs: torch.Tensor) -> torch.Tensor | None:
    """Valid steps per training row (rows are zero-padded after them), or None when unknown."""
    seq_lens = batch.get(Columns.SEQ_LENS)
    if seq_lens is not None and tuple(seq_lens.shape) != (obs.shape[0],):
        return None
    return seq_lens


class STPNModel(TorchRLModule, STPNNetwork, ValueFunctionAPI, TargetNetworkAPI, InferenceOnlyAPI):
    """Recurrent RLModule with an STPN (or baseline) memory core, for PPO, APPO, A2C, ...

    Use it through `RLModuleSpec(module_class=STPNModel, model_config={...})`; the keys are
    those of `rllib_stpn.model_config.DEFAULT_MODEL_CONFIG` (any other key raises).

    State per sample (from `get_initial_state()`): {"h": (H,), "F": (H*D,)} for the STPN cores,
    {"h", "c"} for "lstm", {"h"} for "gru" and "rnn", {} for "mlp" (stateless: no time axis), and
    for the plastic baselines their flattened matrices (e.g. {"h": (H,), "A": (H*H,)} for
    "fastweights"; `self.core.compact_state_keys` names the keys that grow with the synapses).
    With `value_branch` "separate" the value core's state follows under "vf_" keys.

    While sampling (`forward_exploration`/`forward_inference`) the output also holds
    "synaptic_power": the power P_t of SPEC section 1 summed over all of the core's synapses
    (bias excluded), the total the paper reports, one value per sample and step.

    Compact state storage (`model_config["compact_states"]`, default True) needs
    rllib_stpn's connector pieces: A2C installs them itself and `rllib train file` adds them
    for `custom_model: stpn`; for PPO, APPO or any other config built in Python, call
    `rllib_stpn.compact_states(config)`, without which RLlib stores F at every step.
    `vf_share_layers` selects nothing (RLlib's injected False is accepted, a user's own False
    is rejected where it can be seen: A2CConfig, YAML); `value_branch` does.

    For APPO (TargetNetworkAPI) the learner keeps target copies of the encoder, the core and
    the policy head; `forward_target` runs the training batch, with its stored states, through
    them. They stay on the learner: env runners neither build nor receive them.
    """

    _TARGET_NETWORKS = ("encoder", "core", "pi")

    @override(TorchRLModule)
    def setup(self) -> None:
        # Completed with the defaults: RLlib reads "max_seq_len" from it.
        self.model_config = self.build_network(
            self.observation_space, action_dist_input_size(self.action_space), self.model_config
        )
        self._recurrent = self.is_recurrent
        dist = action_dist_class(self.model_config["action_dist"], self.action_space)
        if dist is not None:
            self.action_dist_cls = dist  # RLlib's getters return it for all three phases

    @property
    def compact_state_keys(self) -> tuple[str, ...]:
        """State keys RLlib stores once per training sequence (`rllib_stpn.state_storage`)."""
        if not self.model_config["compact_states"]:
            return ()
        keys = tuple(self.core.compact_state_keys)
        if self.vf_core is not None:
            keys += tuple(VF_STATE_PREFIX + k for k in self.vf_core.compact_state_keys)
        return keys

    @property
    def num_parameters(self) -> int:
        """Trainable parameters (encoder, core and heads)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    @override(TorchRLModule)
    def get_initial_state(self) -> dict[str, np.ndarray]:
        return {k: np.zeros(s, np.float32) for k, s in self.state_shapes().items()}

    def _embed(
        self, batch: dict[str, Any], return_power: bool, target: bool = False
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor | None]:
        # Recurrent modules get (B, T, ...) observations from RLlib's connectors; stateless
        # ones get (B, ...), run here as T=1.
        obs = batch[Columns.OBS]
        if not self._recurrent:
            obs = obs.unsqueeze(1)
        # Training rows are zero-padded after their valid steps: encoder and core skip that.
        seq_lens = _row_lengths(batch, obs) if self._recurrent else None
        out, state, power = self.embed(
            obs,
            batch.get(Columns.STATE_IN),
            seq_lens=seq_lens,
            return_power=return_power,
            encoder=self._target_encoder if target else None,
            core=self._target_core if target else None,
        )
        if not self._recurrent:
            out = out.squeeze(1)
            power = power.squeeze(1) if power is not None else None
        return out, state, power

    def _embed_value(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The separate value branch's output and next "vf_" state (`value_branch` "separate")."""
        obs = batch[Columns.OBS]
        if not self._recurrent:
            out, _ = self.embed_value(obs.unsqueeze(1))
            return out.squeeze(1), {}
        return self.embed_value(obs, batch.get(Columns.STATE_IN), seq_lens=_row_lengths(batch, obs))

    @override(TorchRLModule)
    def _forward(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        """Sampling pass (inference and exploration): logits, next state, synaptic power.

        A separate value branch runs here too, to carry its state (as RLlib's modules do)."""
        emb, state, power = self._embed(batch, self.model_config["measure_power"])
        if self.vf_core is not None and self._recurrent:
            state = {**state, **self._embed_value(batch)[1]}
        out = {Columns.ACTION_DIST_INPUTS: self.pi(emb)}
        if self._recurrent:
            out[Columns.STATE_OUT] = state
        if power is not None:
            out[SYNAPTIC_POWER] = power
        return out

    @override(TorchRLModule)
    def _forward_train(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        emb, state, _ = self._embed(batch, False)
        vf_emb = emb
        if self.vf_core is not None:
            vf_emb, vf_state = self._embed_value(batch)
            state = {**state, **vf_state}
        # EMBEDDINGS: what `compute_values` reads, the value branch's output.
        out = {Columns.ACTION_DIST_INPUTS: self.pi(emb), Columns.EMBEDDINGS: vf_emb}
        if self._recurrent:
            out[Columns.STATE_OUT] = state
        return out

    @override(ValueFunctionAPI)
    def compute_values(
        self, batch: dict[str, Any], embeddings: torch.Tensor | None = None
    ) -> torch.Tensor:
        if embeddings is None and self.vf_core is not None:
            embeddings, _ = self._embed_value(batch)
        elif embeddings is None:
            embeddings, _, _ = self._embed(batch, False)
        return self.vf(embeddings).squeeze(-1)

    @override(TargetNetworkAPI)
    def make_target_networks(self) -> None:
        for name in self._TARGET_NETWORKS:
            setattr(self, f"_target_{name}", make_target_network(getattr(self, name)))

    @override(TargetNetworkAPI)
    def get_target_network_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(getattr(self, n), getattr(self, f"_target_{n}")) for n in self._TARGET_NETWORKS]

    @override(TargetNetworkAPI)
    def forward_target(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Policy logits of the target networks; the state starts from the batch's STATE_IN."""
        emb, _, _ = self._embed(batch, False, target=True)
        return {TARGET_NETWORK_ACTION_DIST_INPUTS: self._target_pi(emb)}

    @override(InferenceOnlyAPI)
    def get_non_inference_attributes(self) -> list[str]:
        # Only the target networks (a learner's copies); the rest is the sampling network.
        return [f"_target_{name}" for name in self._TARGET_NETWORKS]
