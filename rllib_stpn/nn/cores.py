"""Memory cores and observation encoders shared by STPNModel (new stack) and STPNModelV2 (old).

Every core has one interface: `out, state, power = core(x, state, return_power=...,
seq_lens=...)` with x (B, T, I), state a dict of (B, ...) tensors (or None for zeros), out
(B, T, H) and power the per-step synaptic power P_t (B, T) summed over the core's synapses
(SPEC section 1), or None. `seq_lens` (B,) gives each row's valid steps; steps past it are
zero padding whose outputs are ignored: the STPN and plastic cores skip them, the torch RNNs
compute over them.
"""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from rllib_stpn.nn.functional import synaptic_power
from rllib_stpn.nn.plastic import FastWeightsRNN, HebbFF, ModPlastRNN, PlasticLayer, PlasticRNN
from rllib_stpn.nn.stpn import STPN, STPNState

CORES = (
    "stpn",
    "stpnf",
    "lstm",
    "gru",
    "rnn",
    "mlp",
    "fastweights",
    "modplast",
    "hebbff",
    "plastic_hebbian",
    "plastic_gradient",
)
ENCODERS = ("auto", "mlp")
# Activations of the "mlp" encoder and of hidden head layers: RLlib's names (its
# `get_activation_fn`; "swish" is "silu"), so RLlib's DefaultModelConfig values carry over.
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "linear": nn.Identity,
}

State = dict[str, torch.Tensor]


def _gate_power(
    x: torch.Tensor, h_prev: torch.Tensor | None, w_in: torch.Tensor, w_rec: torch.Tensor | None
) -> torch.Tensor:
    """P_t for z_t = [x_t; h_{t-1}] and W = [W_in, W_rec] (every gate row; no bias), (B, T).

    x (B, T, I), h_prev (B, T, H) or None for a feed-forward layer.
    """
    power = synaptic_power(x, w_in)
    if h_prev is not None:
        power = power + synaptic_power(h_prev, w_rec)
    return power


class MemoryCore(nn.Module):
    """Base class: sizes, the state layout, and zero initial states."""

    input_size: int
    hidden_size: int
    # State keys whose size grows with the synapse count (F for the STPN): RLlib keeps them once
    # per training sequence instead of once per step (`rllib_stpn.state_storage`).
    compact_state_keys: tuple[str, ...] = ()

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-sample state shapes, e.g. {"h": (H,)}; {} for a stateless core."""
        raise NotImplementedError

    def initial_state(
        self, batch_size: int, *, device: torch.device | None = None, dtype: torch.dtype = None
    ) -> State:
        ref = next(self.parameters())
        return {
            k: torch.zeros((batch_size, *s), device=device or ref.device, dtype=dtype or ref.dtype)
            for k, s in self.state_shapes().items()
        }

    def _state_or_zeros(self, x: torch.Tensor, state: State | None) -> State:
        if not state:
            return self.initial_state(x.shape[0], device=x.device, dtype=x.dtype)
        expected = self.state_shapes()
        if set(state) != set(expected):
            raise ValueError(
                f"state has keys {sorted(state)}, expected {sorted(expected)} for "
                f"{type(self).__name__}"
            )
        B = x.shape[0]
        for k, s in expected.items():
            if tuple(state[k].shape) != (B, *s):
                raise ValueError(
                    f"state[{k!r}] has shape {tuple(state[k].shape)}, expected {(B, *s)}"
                )
        return state

    def forward(
        self,
        x: torch.Tensor,
        state: State | None = None,
        *,
        return_power: bool = False,
        seq_lens: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, State, torch.Tensor | None]:
        """`seq_lens` (B,): valid steps per row of a zero-padded x; steps after them are ignored
        by the caller, so a core may skip them (the STPN and plastic cores do) or compute over
        them."""
        raise NotImplementedError


class STPNCore(MemoryCore):
    """STPNr (`recurrent=True`) or STPNf; state {"h": (B, H), "F": (B, H*D)} with F flattened."""

    compact_state_keys = ("F",)

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        recurrent: bool = True,
        plasticity: str = "per_synapse",
        normalize: bool = True,
        f_clamp: float | None = None,
        post_update_norm: bool = False,
        weight_init: str = "paper",
    ) -> None:
        super().__init__()
        self.stpn = STPN(
            input_size,
            hidden_size,
            recurrent=recurrent,
            plasticity=plasticity,
            normalize=normalize,
            f_clamp=f_clamp,
            post_update_norm=post_update_norm,
            weight_init=weight_init,
        )
        self.input_size, self.hidden_size = input_size, hidden_size

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"h": (self.hidden_size,), "F": (self.hidden_size * self.stpn.synapse_size,)}

    def forward(self, x, state=None, *, return_power=False, seq_lens=None):
        state = self._state_or_zeros(x, state)
        B, H, D = x.shape[0], self.hidden_size, self.stpn.synapse_size
        result = self.stpn(
            x,
            STPNState(state["h"], state["F"].reshape(B, H, D)),
            return_power=return_power,
            seq_lens=seq_lens,
        )
        out, new = result[0], result[1]
        power = result[2] if return_power else None
        return out, {"h": new.h, "F": new.F.reshape(B, H * D)}, power


class LSTMCore(MemoryCore):
    """torch.nn.LSTM; state {"h", "c"}; power over all four gates' input and recurrent weights."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden_size, batch_first=True)
        self.input_size, self.hidden_size = input_size, hidden_size

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"h": (self.hidden_size,), "c": (self.hidden_size,)}

    def forward(self, x, state=None, *, return_power=False, seq_lens=None):
        state = self._state_or_zeros(x, state)
        h0, c0 = state["h"], state["c"]
        out, (h, c) = self.lstm(x, (h0.unsqueeze(0).contiguous(), c0.unsqueeze(0).contiguous()))
        power = None
        if return_power:
            h_prev = torch.cat([h0.unsqueeze(1), out[:, :-1]], dim=1)
            power = _gate_power(x, h_prev, self.lstm.weight_ih_l0, self.lstm.weight_hh_l0)
        return out, {"h": h.squeeze(0), "c": c.squeeze(0)}, power


def _h_only_forward(core: MemoryCore, net: nn.RNNBase, x, state, return_power: bool):
    """The forward of a one-layer torch RNN/GRU core with state {"h"}: outputs, state, power."""
    state = core._state_or_zeros(x, state)
    h0 = state["h"]
    out, h = net(x, h0.unsqueeze(0).contiguous())
    power = None
    if return_power:
        h_prev = torch.cat([h0.unsqueeze(1), out[:, :-1]], dim=1)
        power = _gate_power(x, h_prev, net.weight_ih_l0, net.weight_hh_l0)
    return out, {"h": h.squeeze(0)}, power


class GRUCore(MemoryCore):
    """torch.nn.GRU; state {"h"}; power over all three gates' (reset, update, new) input and
    recurrent weights, as the LSTM's over its four.

    The new gate's recurrent rows act on r_t * h_{t-1}, but the synapses are W_hn's and their
    presynaptic activity is h_{t-1} (torch applies r_t after the product), so h_{t-1} is the
    presynaptic vector of every recurrent row.
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.gru = nn.GRU(input_size, hidden_size, batch_first=True)
        self.input_size, self.hidden_size = input_size, hidden_size

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"h": (self.hidden_size,)}

    def forward(self, x, state=None, *, return_power=False, seq_lens=None):
        return _h_only_forward(self, self.gru, x, state, return_power)


class RNNCore(MemoryCore):
    """tanh Elman RNN (torch.nn.RNN); state {"h"}; power over input and recurrent weights."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.rnn = nn.RNN(input_size, hidden_size, nonlinearity="tanh", batch_first=True)
        self.input_size, self.hidden_size = input_size, hidden_size

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"h": (self.hidden_size,)}

    def forward(self, x, state=None, *, return_power=False, seq_lens=None):
        return _h_only_forward(self, self.rnn, x, state, return_power)


class MLPCore(MemoryCore):
    """One tanh layer, no memory; stateless ({}); power over its weight matrix."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(input_size, hidden_size)
        self.input_size, self.hidden_size = input_size, hidden_size

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        return {}

    def forward(self, x, state=None, *, return_power=False, seq_lens=None):
        out = torch.tanh(self.linear(x))
        power = _gate_power(x, None, self.linear.weight, None) if return_power else None
        return out, {}, power


class PlasticLayerCore(MemoryCore):
    """A layer of `rllib_stpn.nn.plastic` as a core: its state matrices travel flattened.

    A subclass names its `layer_class`. The state keys are the layer's NamedTuple fields, e.g.
    {"h": (H,), "A": (H*H,)}; the power is the layer's (SPEC section 1 over the efficacies the
    layer applies, see its docstring).
    """

    layer_class: type[PlasticLayer]

    def __init__(self, input_size: int, hidden_size: int, **layer_kwargs) -> None:
        super().__init__()
        self.layer = self.layer_class(input_size, hidden_size, **layer_kwargs)
        self.input_size, self.hidden_size = input_size, hidden_size

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: (math.prod(s),) for k, s in self.layer.state_shapes().items()}

    def forward(self, x, state=None, *, return_power=False, seq_lens=None):
        self.layer.check_input(x)
        state = self._state_or_zeros(x, state)
        B = x.shape[0]
        shapes = self.layer.state_shapes()
        layer_state = self.layer.state_type(*(state[k].reshape(B, *s) for k, s in shapes.items()))
        result = self.layer(x, layer_state, return_power=return_power, seq_lens=seq_lens)
        new = {k: v.reshape(B, -1) for k, v in zip(shapes, result[1])}
        return result[0], new, result[2] if return_power else None


class FastWeightsCore(PlasticLayerCore):
    """Ba et al. 2016 fast weights (FastWeightsRNN); state {"h": (H,), "A": (H*H,)}."""

    layer_class = FastWeightsRNN
    compact_state_keys = ("A",)


class ModPlastCore(PlasticLayerCore):
    """Miconi et al. 2019 Backpropamine (ModPlastRNN); state {"h": (H,), "Hebb": (H*H,)}."""

    layer_class = ModPlastRNN
    compact_state_keys = ("Hebb",)


class HebbFFCore(PlasticLayerCore):
    """Tyulmankov et al. 2022 HebbFF; state {"A": (H*I,)} (no recurrent neurons)."""

    layer_class = HebbFF
    compact_state_keys = ("A",)


class PlasticRNNCore(PlasticLayerCore):
    """Duan et al. 2023 PlasticRNN, `rule` "hebbian" or "gradient"; state {"h": (H,), "P"}.

    P holds every plastic part (in_fc, the RNN cell and the read-out, see `PlasticRNN`) flat.
    """

    layer_class = PlasticRNN
    compact_state_keys = ("P",)


def build_core(
    core: str,
    input_size: int,
    hidden_size: int,
    *,
    plasticity: str = "per_synapse",
    normalize: bool = True,
    f_clamp: float | None = None,
    post_update_norm: bool = False,
    weight_init: str = "paper",
) -> MemoryCore:
    """The memory core named `core` (one of CORES); the keyword options are the STPN layer's
    (`rllib_stpn.nn.stpn.STPN`) and apply to "stpn" and "stpnf" only."""
    if core in ("stpn", "stpnf"):
        return STPNCore(
            input_size,
            hidden_size,
            recurrent=core == "stpn",
            plasticity=plasticity,
            normalize=normalize,
            f_clamp=f_clamp,
            post_update_norm=post_update_norm,
            weight_init=weight_init,
        )
    if core == "lstm":
        return LSTMCore(input_size, hidden_size)
    if core == "gru":
        return GRUCore(input_size, hidden_size)
    if core == "rnn":
        return RNNCore(input_size, hidden_size)
    if core == "mlp":
        return MLPCore(input_size, hidden_size)
    if core == "fastweights":
        return FastWeightsCore(input_size, hidden_size)
    if core == "modplast":
        return ModPlastCore(input_size, hidden_size)
    if core == "hebbff":
        return HebbFFCore(input_size, hidden_size)
    if core in ("plastic_hebbian", "plastic_gradient"):
        return PlasticRNNCore(input_size, hidden_size, rule=core.removeprefix("plastic_"))
    raise ValueError(f"core must be one of {CORES}, got {core!r}")


class Encoder(nn.Module):
    """Maps observations (B, T, *obs_shape) to features (B, T, output_size)."""

    output_size: int

    def __init__(self, obs_shape: tuple[int, ...], scale: float) -> None:
        super().__init__()
        self.obs_shape = tuple(obs_shape)
        # uint8 frames are scaled to [0, 1]; other observations are passed as they are.
        self.scale = scale

    def forward(self, obs: torch.Tensor, seq_lens: torch.Tensor | None = None) -> torch.Tensor:
        """obs (B, T, *obs_shape) -> (B, T, output_size).

        With `seq_lens` (B,), only the first seq_lens[b] steps of row b are encoded; the
        zero padding after them gets zero features (the learner masks it out anyway).
        """
        lead = obs.shape[: obs.dim() - len(self.obs_shape)]
        if len(lead) != 2 or tuple(obs.shape[2:]) != self.obs_shape:
            raise ValueError(
                f"observations must have shape (B, T, *{self.obs_shape}), got {tuple(obs.shape)}"
            )
        B, T = lead
        valid = None
        if seq_lens is not None and self.skips_padding:
            valid = torch.arange(T, device=obs.device) < seq_lens.to(obs.device).unsqueeze(1)
            if bool(valid.all()):
                valid = None
        frames = obs[valid] if valid is not None else obs.reshape(B * T, *self.obs_shape)
        x = frames.to(torch.get_default_dtype()) if not frames.is_floating_point() else frames
        if self.scale != 1.0:
            x = x * self.scale
        features = self.encode(x)
        if valid is None:
            return features.reshape(B, T, self.output_size)
        out = features.new_zeros(B, T, self.output_size)
        out[valid] = features
        return out

    # Whether encoding the padding costs enough to be worth gathering the valid steps first.
    skips_padding = True

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(N, *obs_shape) float observations -> (N, output_size)."""
        raise NotImplementedError


class FlattenEncoder(Encoder):
    """Identity for vector observations (multi-dimensional ones are flattened)."""

    def __init__(self, obs_shape: tuple[int, ...], scale: float = 1.0) -> None:
        super().__init__(obs_shape, scale)
        self.output_size = int(np.prod(obs_shape))

    skips_padding = False  # nothing to compute: the padding is zeros already

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], self.output_size)


def mlp_layers(size: int, hiddens: list[int], activation: str) -> list[nn.Module]:
    """Linear layers of sizes `hiddens` from `size` features, each followed by `activation`."""
    layers: list[nn.Module] = []
    for h in hiddens:
        layers += [nn.Linear(size, h), ACTIVATIONS[activation]()]
        size = h
    return layers


class MLPEncoder(Encoder):
    """Flattened observations through layers of sizes `hiddens`, each followed by `activation`
    (ReLU by default; RLlib's LSTM tokenizer: tanh, also after the last layer)."""

    def __init__(
        self,
        obs_shape: tuple[int, ...],
        hiddens: list[int],
        scale: float = 1.0,
        activation: str = "relu",
    ) -> None:
        super().__init__(obs_shape, scale)
        self.net = nn.Sequential(*mlp_layers(int(np.prod(obs_shape)), hiddens, activation))
        self.output_size = hiddens[-1] if hiddens else int(np.prod(obs_shape))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.reshape(x.shape[0], -1))


class AtariCNNEncoder(Encoder):
    """Mnih et al. 2016: conv 16 8x8 s4 -> ReLU -> conv 32 4x4 s2 -> ReLU -> flatten.

    Takes (B, T, H, W, C) frames; 84x84 frames give 9*9*32 = 2592 features.
    """

    def __init__(self, obs_shape: tuple[int, ...], scale: float = 1.0) -> None:
        super().__init__(obs_shape, scale)
        height, width, channels = obs_shape
        if height < 20 or width < 20:
            raise ValueError(f"the CNN encoder needs frames of at least 20x20, got {obs_shape}")
        self.net = nn.Sequential(
            nn.Conv2d(channels, 16, kernel_size=8, stride=4),
            nn.ReLU(),
            nn.Conv2d(16, 32, kernel_size=4, stride=2),
            nn.ReLU(),
            nn.Flatten(),
        )
        out_h, out_w = ((height - 8) // 4 + 1 - 4) // 2 + 1, ((width - 8) // 4 + 1 - 4) // 2 + 1
        self.output_size = 32 * out_h * out_w

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.permute(0, 3, 1, 2))  # NHWC -> NCHW


def build_encoder(
    encoder: str, obs_space: gym.Space, hiddens: list[int] | None = None, activation: str = "relu"
) -> Encoder:
    """Encoder for `obs_space` (a Box): "auto" = CNN for (H, W, C) images, else identity;
    "mlp" = layers of sizes `hiddens`, each followed by `activation` (one of ACTIVATIONS)."""
    if not isinstance(obs_space, gym.spaces.Box):
        raise ValueError(
            f"STPN encoders need a Box observation space, got {obs_space}; "
            "flatten or one-hot it first (e.g. with a FlattenObservations connector)"
        )
    shape = tuple(obs_space.shape)
    scale = 1.0 / 255.0 if obs_space.dtype == np.uint8 else 1.0
    if encoder == "auto":
        if len(shape) == 3:
            return AtariCNNEncoder(shape, scale)
        return FlattenEncoder(shape, scale)
    if encoder == "mlp":
        return MLPEncoder(shape, list(hiddens or []), scale, activation)
    raise ValueError(f"encoder must be one of {ENCODERS}, got {encoder!r}")


def action_dist_input_size(action_space: gym.Space) -> int:
    """Policy-head outputs for RLlib's default distributions: Categorical or DiagGaussian."""
    if isinstance(action_space, gym.spaces.Discrete):
        return int(action_space.n)
    if isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
        return 2 * int(math.prod(action_space.shape))  # mean and log-std
    raise ValueError(f"action space must be Discrete or a 1-D Box, got {action_space}")
