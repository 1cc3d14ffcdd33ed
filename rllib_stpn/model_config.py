"""The `model_config` of STPNModel / STPNModelV2: keys, defaults, validation, core sizes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from rllib_stpn.nn.cores import ACTIVATIONS, CORES, ENCODERS, build_core
from rllib_stpn.nn.stpn import PLASTICITY_MODES
from rllib_stpn.nn.variants import WEIGHT_INITS

# Names of the action distributions (rllib_stpn.distributions, which imports Ray, has them).
ACTION_DISTS = ("default", "softplus_gaussian")

DEFAULT_MODEL_CONFIG: dict[str, Any] = {
    # Memory core: "stpn" (STPNr), "stpnf" (STPNf), "lstm", "gru", "rnn", "mlp" (no memory), or a
    # plastic baseline: "fastweights", "modplast", "hebbff", "plastic_hebbian",
    # "plastic_gradient" (rllib_stpn/nn/plastic/, docs/fidelity.md).
    "core": "stpn",
    # Neurons of the core (H).
    "hidden_size": 64,
    # STPN cores only: "per_synapse" Λ, Γ or one "uniform" scalar each (the paper's ablation).
    "plasticity": "per_synapse",
    # STPN cores only: per-neuron L2 normalisation of W + F.
    "normalize": True,
    # STPN cores only, the authors' variants (docs/fidelity.md, "STPN layer variants"):
    # None, or c > 0 to clamp F to [-c, c] after every update (their InvertedPendulum: 0.1,
    # maze: 1.0);
    "f_clamp": None,
    # normalise F after the Hebbian update instead of before it (their maze);
    "post_update_norm": False,
    # "paper" (appendix A.4, bounds by hidden size) or "input" (their STPNf: by input size).
    "weight_init": "paper",
    # Continuous actions: "default" (RLlib's Gaussian, std = exp(head output)) or
    # "softplus_gaussian" (std = softplus(head output), the authors' InvertedPendulum).
    "action_dist": "default",
    # "auto": Mnih et al. 2016 CNN for (H, W, C) image observations, identity for vectors.
    # "mlp": ReLU layers of sizes `encoder_hiddens`.
    "encoder": "auto",
    "encoder_hiddens": [64],
    # Activation after each "mlp" encoder layer, RLlib's names (its LSTM tokenizer: "tanh").
    "encoder_activation": "relu",
    # Hidden layers of the policy and of the value head (each its own), then a linear output:
    # RLlib's `head_fcnet_hiddens` / `head_fcnet_activation`. [] = linear heads (the paper's).
    "head_hiddens": [],
    "head_activation": "relu",
    # "shared": the value head reads the policy's core (the paper's actor-critic). "separate":
    # the value head has its own encoder and core, with its state under "vf_"-prefixed keys
    # (RLlib's PPO/APPO default modules when `vf_share_layers` is False).
    "value_branch": "shared",
    # Length of the BPTT chunks the learner trains on (read by RLlib's connectors).
    "max_seq_len": 50,
    # Emit the "synaptic_power" column during sampling.
    "measure_power": True,
    # Store the core's large state keys (F for STPN) once per training sequence instead of once
    # per step. Acts only where rllib_stpn's state-storage pieces are in the connector
    # pipelines: A2C (always), `rllib train file` with custom_model: stpn (any algorithm) and
    # any config passed to `rllib_stpn.compact_states(config)`. Anywhere else (e.g. a PPOConfig
    # built in Python without that call) RLlib's default path stores every step's state,
    # whatever this says. False: RLlib's default path even where the pieces are.
    "compact_states": True,
}

# Keys RLlib's algorithm configs inject into every module's model_config on their own
# (`AlgorithmConfig._model_config_auto_includes`: PPO, APPO and A2C `vf_share_layers=False`).
# They select nothing (PPO's False would change every default): by default the policy and
# value heads share the encoder and core, as in the paper, and `value_branch` "separate" gives
# the value its own; see `check_vf_share_layers` for a `vf_share_layers` a user sets.
RLLIB_INJECTED_KEYS = frozenset({"vf_share_layers", "twin_q"})


def check_vf_share_layers(user_model_config: Mapping[str, Any] | None) -> None:
    """Reject a user's own `vf_share_layers=False` (separate value layers) with a one-line
    ValueError pointing to `value_branch`, which selects STPNModel's value network. True, or
    leaving it out, is fine.

    Pass the settings the user wrote, not the module's model_config: there PPO, APPO and A2C
    have put their own `vf_share_layers=False`, which the module cannot tell from a user's
    and accepts. A2CConfig.validate() calls this; the YAML path rejects the key outright.
    """
    value = (user_model_config or {}).get("vf_share_layers")
    if value is False:
        raise ValueError(
            "model_config['vf_share_layers']=False: STPNModel selects a separate value network "
            "with model_config['value_branch']='separate'; leave vf_share_layers out or set True"
        )


VALUE_BRANCHES = ("shared", "separate")


def _positive_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"model_config[{key!r}] must be a positive int, got {value!r}")
    return value


def _bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"model_config[{key!r}] must be True or False, got {value!r}")
    return value


def _f_clamp(value: Any) -> float | None:
    ok = value is None or (
        not isinstance(value, bool) and isinstance(value, int | float) and 0 < value < float("inf")
    )
    if not ok:
        raise ValueError(
            f"model_config['f_clamp'] must be None or a positive finite number, got {value!r}"
        )
    return None if value is None else float(value)


def _choice(key: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"model_config[{key!r}] must be one of {allowed}, got {value!r}")
    return value


def validate_model_config(model_config: Mapping[str, Any] | None) -> dict[str, Any]:
    """Check `model_config` and return it completed with the defaults of DEFAULT_MODEL_CONFIG.

    Raises ValueError naming the bad key or value and what is allowed.
    """
    if model_config is None:
        model_config = {}
    if not isinstance(model_config, Mapping):
        raise ValueError(f"model_config must be a dict, got {type(model_config).__name__}")
    valid = sorted(DEFAULT_MODEL_CONFIG)
    for key in model_config:
        if key not in DEFAULT_MODEL_CONFIG and key not in RLLIB_INJECTED_KEYS:
            raise ValueError(f"unknown model_config key {key!r}; valid keys: {', '.join(valid)}")
    cfg = {**DEFAULT_MODEL_CONFIG, **model_config}
    if "vf_share_layers" in cfg:
        _bool("vf_share_layers", cfg["vf_share_layers"])
    _choice("core", cfg["core"], CORES)
    _choice("plasticity", cfg["plasticity"], PLASTICITY_MODES)
    _choice("encoder", cfg["encoder"], ENCODERS)
    _positive_int("hidden_size", cfg["hidden_size"])
    _positive_int("max_seq_len", cfg["max_seq_len"])
    _bool("normalize", cfg["normalize"])
    cfg["f_clamp"] = _f_clamp(cfg["f_clamp"])
    _bool("post_update_norm", cfg["post_update_norm"])
    _choice("weight_init", cfg["weight_init"], WEIGHT_INITS)
    _choice("action_dist", cfg["action_dist"], ACTION_DISTS)
    _bool("measure_power", cfg["measure_power"])
    _bool("compact_states", cfg["compact_states"])
    for key in ("encoder_hiddens", "head_hiddens"):
        hiddens = cfg[key]
        if not isinstance(hiddens, list | tuple):
            raise ValueError(f"model_config[{key!r}] must be a list of ints, got {hiddens!r}")
        cfg[key] = [_positive_int(key, h) for h in hiddens]
    activations = tuple(ACTIVATIONS)
    _choice("encoder_activation", cfg["encoder_activation"], activations)
    _choice("head_activation", cfg["head_activation"], activations)
    if cfg["encoder_activation"] != "relu" and cfg["encoder"] != "mlp":
        raise ValueError(
            f"model_config['encoder_activation']={cfg['encoder_activation']!r} needs "
            f"encoder 'mlp' (the 'auto' encoder is an identity or a ReLU CNN), got "
            f"encoder {cfg['encoder']!r}"
        )
    _choice("value_branch", cfg["value_branch"], VALUE_BRANCHES)
    return cfg


def count_core_parameters(
    core: str,
    input_size: int,
    hidden_size: int,
    *,
    num_outputs: int | None = None,
    plasticity: str = "per_synapse",
) -> int:
    """Number of trainable parameters in the memory core; the encoder is not counted.

    `input_size` is the number of features the core receives (the encoder's output size).
    With `num_outputs` (e.g. the number of discrete actions) the policy and value heads are
    counted too. For the whole model use `rllib_stpn.network.count_model_parameters`. The
    modules are built on the meta device: no memory is allocated and the count is theirs.
    """
    _choice("core", core, CORES)
    _choice("plasticity", plasticity, PLASTICITY_MODES)
    I = _positive_int("input_size", input_size)
    H = _positive_int("hidden_size", hidden_size)
    with torch.device("meta"):
        modules = [build_core(core, I, H, plasticity=plasticity)]
        if num_outputs is not None:
            modules += [nn.Linear(H, _positive_int("num_outputs", num_outputs)), nn.Linear(H, 1)]
    return sum(p.numel() for m in modules for p in m.parameters() if p.requires_grad)


def core_hidden_size_for_params(
    target: int,
    *,
    core: str,
    input_size: int,
    num_outputs: int | None = None,
    plasticity: str = "per_synapse",
    max_hidden_size: int = 4096,
) -> int:
    """The core's hidden size whose `count_core_parameters` is closest to `target` (the
    smaller one on a tie). Like that count, it leaves the encoder out.

    The paper compares models at about equal parameter counts, e.g. for Pong (2592 CNN
    features) `core_hidden_size_for_params(count_core_parameters("stpn", 2592, 64), core="lstm",
    input_size=2592)` gives 48, the paper's LSTM size.
    """
    _positive_int("target", target)

    def count(h: int) -> int:
        return count_core_parameters(
            core, input_size, h, num_outputs=num_outputs, plasticity=plasticity
        )

    # Counts grow strictly with h: bisect for the first size reaching the target, then take
    # the closer of it and the size below.
    low, high = 1, max_hidden_size
    while low < high:
        mid = (low + high) // 2
        if count(mid) >= target:
            high = mid
        else:
            low = mid + 1
    if low > 1 and abs(count(low - 1) - target) <= abs(count(low) - target):
        return low - 1
    return low


# Old names, kept for existing code: the same functions (core only, encoder not counted).
count_parameters = count_core_parameters
hidden_size_for_params = core_hidden_size_for_params
