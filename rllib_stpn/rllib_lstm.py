"""STPNModel as RLlib's default LSTM module: the equal model_config and a weight loader.

RLlib's default PPO module with `use_lstm=True` is: a tokenizer MLP of sizes `fcnet_hiddens`
with `fcnet_activation` after every layer (the last too), one `nn.LSTM` of `lstm_cell_size`,
and policy and value heads of `head_fcnet_hiddens` (`head_fcnet_activation`) with a linear
output. With `vf_share_layers` False (what PPO injects into a plain-dict model_config) the
value head has its own tokenizer and LSTM; with True (DefaultModelConfig's own default) both
heads read one LSTM. `rllib_lstm_model_config` gives the STPNModel model_config of the same
network; `load_rllib_lstm_weights` copies an RLlib module's weights into it, e.g. to check the
equivalence (tests/test_lstm_equivalence.py) or to start from an RLlib LSTM checkpoint.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from rllib_stpn.network import STPNNetwork

# DefaultModelConfig keys whose non-default values STPNModel has no counterpart for.
_UNSUPPORTED = (
    "fcnet_use_layernorm",
    "head_fcnet_use_layernorm",
    "free_log_std",
    "lstm_use_prev_action",
    "lstm_use_prev_reward",
    "fcnet_kernel_initializer",
    "fcnet_bias_initializer",
    "head_fcnet_kernel_initializer",
    "head_fcnet_bias_initializer",
    "lstm_kernel_initializer",
    "lstm_bias_initializer",
)


def rllib_lstm_model_config(model_config: Any) -> dict[str, Any]:
    """The STPNModel model_config equal to RLlib's default LSTM module for `model_config`.

    `model_config`: a DefaultModelConfig, or the dict an algorithm config hands its module
    (`PPOConfig().model_config`, which holds PPO's injected `vf_share_layers=False`); keys it
    lacks take DefaultModelConfig's defaults. Raises ValueError for settings without a
    counterpart (`use_lstm` False, layer norm, custom initializers, free log-std, prev
    action/reward inputs).
    """
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    if dataclasses.is_dataclass(model_config) and not isinstance(model_config, type):
        model_config = dataclasses.asdict(model_config)
    if not isinstance(model_config, Mapping):
        raise ValueError(
            f"model_config must be a DefaultModelConfig or a dict, got {model_config!r}"
        )
    cfg = {**dataclasses.asdict(DefaultModelConfig()), **model_config}
    if not cfg["use_lstm"]:
        raise ValueError("rllib_lstm_model_config needs use_lstm=True, got use_lstm=False")
    defaults = dataclasses.asdict(DefaultModelConfig())
    for key in _UNSUPPORTED:
        if cfg.get(key) != defaults[key]:
            raise ValueError(
                f"{key}={cfg[key]!r} has no STPNModel counterpart; allowed: {defaults[key]!r}"
            )
    if not cfg["fcnet_hiddens"]:
        raise ValueError("RLlib's LSTM module needs a non-empty fcnet_hiddens, got []")
    return {
        "core": "lstm",
        "hidden_size": cfg["lstm_cell_size"],
        "encoder": "mlp",
        "encoder_hiddens": list(cfg["fcnet_hiddens"]),
        "encoder_activation": _activation(cfg["fcnet_activation"]),
        "head_hiddens": list(cfg["head_fcnet_hiddens"]),
        "head_activation": _activation(cfg["head_fcnet_activation"]),
        "value_branch": "shared" if cfg.get("vf_share_layers", True) else "separate",
        "max_seq_len": cfg["max_seq_len"],
    }


def _activation(name: Any) -> str:
    # RLlib accepts None and any capitalisation ("ReLU"); STPNModel takes its lower-case names.
    return "linear" if name is None else str(name).lower()


def _linears(module: nn.Module) -> list[nn.Linear]:
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


def _copy_linears(dst: nn.Module, src: nn.Module, where: str) -> None:
    dst_layers, src_layers = _linears(dst), _linears(src)
    shapes = [tuple(m.weight.shape) for m in dst_layers]
    src_shapes = [tuple(m.weight.shape) for m in src_layers]
    if shapes != src_shapes:
        raise ValueError(f"{where}: RLlib's layers {src_shapes} differ from STPNModel's {shapes}")
    for d, s in zip(dst_layers, src_layers):
        d.weight.copy_(s.weight)
        d.bias.copy_(s.bias)


@torch.no_grad()
def load_rllib_lstm_weights(module: STPNNetwork, rllib_module: nn.Module) -> None:
    """Copy the weights of RLlib's default PPO LSTM module (DefaultPPOTorchRLModule with
    `use_lstm=True`) into `module`, an STPNModel built with `rllib_lstm_model_config` of the
    same model config. Raises ValueError when the two layouts differ."""
    enc = rllib_module.encoder
    if module.model_config["core"] != "lstm" or module.model_config["encoder"] != "mlp":
        raise ValueError(
            "load_rllib_lstm_weights needs an STPNModel with core 'lstm', encoder 'mlp'"
        )
    shared = hasattr(enc, "encoder")
    if shared != (module.vf_core is None):
        raise ValueError(
            f"RLlib's module {'shares' if shared else 'does not share'} its LSTM between policy "
            f"and value; STPNModel has value_branch {module.model_config['value_branch']!r}"
        )
    pairs = [("", enc.encoder if shared else enc.actor_encoder)]
    if not shared:
        pairs.append(("vf_", enc.critic_encoder))
    for prefix, lstm_encoder in pairs:
        _copy_linears(getattr(module, prefix + "encoder"), lstm_encoder.tokenizer, "tokenizer")
        getattr(module, prefix + "core").lstm.load_state_dict(lstm_encoder.lstm.state_dict())
    _copy_linears(module.pi, rllib_module.pi, "pi head")
    _copy_linears(module.vf, rllib_module.vf, "vf head")
