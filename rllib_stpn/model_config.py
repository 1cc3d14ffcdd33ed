"""The `model_config` of STPNModel / STPNModelV2: keys, defaults, validation, parameter counts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rllib_stpn.nn.cores import CORES, ENCODERS
from rllib_stpn.nn.stpn import PLASTICITY_MODES

DEFAULT_MODEL_CONFIG: dict[str, Any] = {
    # Memory core: "stpn" (STPNr), "stpnf" (STPNf), "lstm", "rnn", "mlp" (no memory), or a
    # plastic baseline: "fastweights", "modplast", "hebbff", "plastic_hebbian",
    # "plastic_gradient" (rllib_stpn/nn/plastic/, docs/fidelity.md).
    "core": "stpn",
    # Neurons of the core (H).
    "hidden_size": 64,
    # STPN cores only: "per_synapse" Λ, Γ or one "uniform" scalar each (the paper's ablation).
    "plasticity": "per_synapse",
    # STPN cores only: per-neuron L2 normalisation of W + F.
    "normalize": True,
    # "auto": Mnih et al. 2016 CNN for (H, W, C) image observations, identity for vectors.
    # "mlp": ReLU layers of sizes `encoder_hiddens`.
    "encoder": "auto",
    "encoder_hiddens": [64],
    # Length of the BPTT chunks the learner trains on (read by RLlib's connectors).
    "max_seq_len": 50,
    # Emit the "synaptic_power" column during sampling.
    "measure_power": True,
    # Store the core's large state keys (F for STPN) once per training sequence instead of once
    # per step (A2C, or any algorithm after `rllib_stpn.compact_states(config)`).
    "compact_states": True,
}

# Keys RLlib's algorithm configs inject into every module's model_config on their own
# (`AlgorithmConfig._model_config_auto_includes`, e.g. PPO's `vf_share_layers=False`). They are
# accepted and ignored: policy and value heads always share the encoder and core, as in the paper.
RLLIB_INJECTED_KEYS = frozenset({"vf_share_layers", "twin_q"})


def _positive_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"model_config[{key!r}] must be a positive int, got {value!r}")
    return value


def _bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"model_config[{key!r}] must be True or False, got {value!r}")
    return value


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
    _choice("core", cfg["core"], CORES)
    _choice("plasticity", cfg["plasticity"], PLASTICITY_MODES)
    _choice("encoder", cfg["encoder"], ENCODERS)
    _positive_int("hidden_size", cfg["hidden_size"])
    _positive_int("max_seq_len", cfg["max_seq_len"])
    _bool("normalize", cfg["normalize"])
    _bool("measure_power", cfg["measure_power"])
    _bool("compact_states", cfg["compact_states"])
    hiddens = cfg["encoder_hiddens"]
    if not isinstance(hiddens, list | tuple):
        raise ValueError(f"model_config['encoder_hiddens'] must be a list of ints, got {hiddens!r}")
    cfg["encoder_hiddens"] = [_positive_int("encoder_hiddens", h) for h in hiddens]
    return cfg


def count_parameters(
    core: str,
    input_size: int,
    hidden_size: int,
    *,
    num_outputs: int | None = None,
    plasticity: str = "per_synapse",
) -> int:
    """Trainable parameters of a core with `input_size` inputs (the encoder's output size).

    With `num_outputs` (policy logits, e.g. the number of discrete actions), the linear policy
    head and the value head are counted too.
    """
    _choice("core", core, CORES)
    _choice("plasticity", plasticity, PLASTICITY_MODES)
    I = _positive_int("input_size", input_size)
    H = _positive_int("hidden_size", hidden_size)
    if core in ("stpn", "stpnf"):
        D = I + H if core == "stpn" else I
        # W and bias, plus Λ and Γ per synapse or as two scalars.
        n = H * D + H + (2 * H * D if plasticity == "per_synapse" else 2)
    elif core == "lstm":
        n = 4 * H * (I + H) + 8 * H  # torch.nn.LSTM keeps two bias vectors
    elif core == "rnn":
        n = H * (I + H) + 2 * H
    elif core == "mlp":
        n = H * I + H
    elif core == "fastweights":
        n = H * (I + H) + 3 * H  # W_x, W_h, bias, layer-norm gain and bias
    elif core == "modplast":
        n = H * I + 2 * H * H + 2 * H + 1  # W_in, bias, W, α, neuromodulator w_m and b_m
    elif core == "hebbff":
        n = H * I + H + 2  # W, bias, λ (as its logit) and η (as log(-η))
    else:  # plastic_hebbian, plastic_gradient (PlasticRNN with its 4 extra read-out units)
        O = H + 4 + 1  # out_fc: H task units, 4 extra units, the modulatory unit
        weights, biases = H * I + 2 * H * H + O * H, H + 2 * H + O  # in_fc, RNN cell, out_fc
        if core == "plastic_hebbian":  # a learned rate per plastic weight
            n = 2 * weights + biases
        else:  # biases plastic too, a rate for each, and the inner loss's weights ω
            n = 2 * (weights + biases) + O
    if num_outputs is not None:
        n += (H + 1) * (_positive_int("num_outputs", num_outputs) + 1)
    return n


def hidden_size_for_params(
    target: int,
    *,
    core: str,
    input_size: int,
    num_outputs: int | None = None,
    plasticity: str = "per_synapse",
    max_hidden_size: int = 4096,
) -> int:
    """The hidden size whose `count_parameters` is closest to `target` (ties: the smaller size).

    The paper compares models at about equal parameter counts, e.g. for Pong (2592 CNN
    features) `hidden_size_for_params(count_parameters("stpn", 2592, 64), core="lstm",
    input_size=2592)` gives 48, the paper's LSTM size.
    """
    _positive_int("target", target)
    best, best_err = 1, None
    for h in range(1, max_hidden_size + 1):
        n = count_parameters(core, input_size, h, num_outputs=num_outputs, plasticity=plasticity)
        err = abs(n - target)
        if best_err is None or err < best_err:
            best, best_err = h, err
        if n > target:  # counts grow with h: nothing further can be closer
            break
    return best
