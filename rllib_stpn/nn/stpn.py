"""The Short-Term Plasticity Neuron layer (Rodriguez, Guo & Moraitis, ICML 2022)."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from rllib_stpn.nn.functional import stpn_sequence_reference
from rllib_stpn.nn.fused import stpn_sequence_fused
from rllib_stpn.nn.variants import WEIGHT_INITS, check_f_clamp

PLASTICITY_MODES = ("per_synapse", "uniform")
IMPLEMENTATIONS = {"fused": stpn_sequence_fused, "reference": stpn_sequence_reference}


class STPNState(NamedTuple):
    """STPN layer state: hidden output `h` (B, H) and synaptic memory `F` (B, H, D)."""

    h: torch.Tensor
    F: torch.Tensor


def _check_size(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class STPN(nn.Module):
    """A layer of STPNs: `out, state = layer(x, state)`, like `torch.nn.LSTM(batch_first=True)`.

    Each synapse has a long-term weight W (trained by backprop) plus a short-term component F
    (per sequence) that decays with retention Λ and grows Hebbianly with rate Γ.

    Args:
        input_size: I, features of x.
        hidden_size: H, number of neurons.
        recurrent: STPNr (True): the presynaptic vector is [x_t; h_{t-1}], D = I + H.
            STPNf (False): it is x_t alone, D = I.
        plasticity: "per_synapse" (Λ, Γ of shape (H, D)) or "uniform" (one scalar each).
        normalize: divide each neuron's total efficacy row W + F by its L2 norm every step.
        bias: learn a bias b (H).
        f_clamp: None, or c > 0 to clamp F to [-c, c] after every update (the authors' code:
            0.1 for InvertedPendulum, 1.0 for the maze).
        post_update_norm: update the un-normalised F, then divide it by ||W + F|| per neuron
            (the authors' maze: plastic_weight_norm time "post"); False updates F / ||W + F||
            (the paper's Algorithm 1). See docs/fidelity.md, "STPN layer variants".
        weight_init: "paper" (appendix A.4: W, b ~ U(±1/√H), Γ ~ U(±0.001/√H)) or "input"
            (the authors' STPNf code: the same with the input size I in place of H).
        implementation: "fused" (default; hand-written backward, one (B, H, D) tensor kept
            per step) or "reference" (plain autograd, the readable version used in tests).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        recurrent: bool = True,
        plasticity: str = "per_synapse",
        normalize: bool = True,
        bias: bool = True,
        implementation: str = "fused",
        f_clamp: float | None = None,
        post_update_norm: bool = False,
        weight_init: str = "paper",
    ) -> None:
        super().__init__()
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(
                f"implementation must be one of {tuple(IMPLEMENTATIONS)}, got {implementation!r}"
            )
        self.implementation = implementation
        self.input_size = _check_size("input_size", input_size)
        self.hidden_size = _check_size("hidden_size", hidden_size)
        if plasticity not in PLASTICITY_MODES:
            raise ValueError(f"plasticity must be one of {PLASTICITY_MODES}, got {plasticity!r}")
        self.recurrent = bool(recurrent)
        self.plasticity = plasticity
        self.normalize = bool(normalize)
        self.f_clamp = check_f_clamp(f_clamp)
        if not isinstance(post_update_norm, bool):
            raise ValueError(f"post_update_norm must be True or False, got {post_update_norm!r}")
        self.post_update_norm = post_update_norm
        if weight_init not in WEIGHT_INITS:
            raise ValueError(f"weight_init must be one of {WEIGHT_INITS}, got {weight_init!r}")
        self.weight_init = weight_init
        self.synapse_size = self.input_size + (self.hidden_size if self.recurrent else 0)
        H, D = self.hidden_size, self.synapse_size
        stp_shape = (H, D) if plasticity == "per_synapse" else ()
        self.weight = nn.Parameter(torch.empty(H, D))
        self.bias = nn.Parameter(torch.empty(H)) if bias else None
        self.weight_lambda = nn.Parameter(torch.empty(stp_shape))
        self.weight_gamma = nn.Parameter(torch.empty(stp_shape))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Appendix A.4 of the paper, with the size named by `weight_init` (H or I)."""
        fan = self.hidden_size if self.weight_init == "paper" else self.input_size
        bound = 1.0 / math.sqrt(fan)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)
        nn.init.uniform_(self.weight_lambda, 0.0, 1.0)
        nn.init.uniform_(self.weight_gamma, -0.001 * bound, 0.001 * bound)

    def initial_state(
        self,
        batch_size: int,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> STPNState:
        """Zero state for `batch_size` sequences."""
        device = self.weight.device if device is None else device
        dtype = self.weight.dtype if dtype is None else dtype
        H, D = self.hidden_size, self.synapse_size
        return STPNState(
            torch.zeros(batch_size, H, device=device, dtype=dtype),
            torch.zeros(batch_size, H, D, device=device, dtype=dtype),
        )

    def _check_inputs(self, x: torch.Tensor, state: STPNState | None) -> STPNState:
        if not isinstance(x, torch.Tensor) or x.dim() != 3:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must have shape (batch, time, {self.input_size}), got {shape}")
        B, T, I = x.shape
        if I != self.input_size:
            raise ValueError(
                f"x has {I} features in its last dimension, expected input_size={self.input_size}"
            )
        if T == 0:
            raise ValueError("x has 0 time steps, expected at least 1")
        self._check_dtype_and_device("x", x)
        if state is None:
            return self.initial_state(B, device=x.device, dtype=x.dtype)
        if not (isinstance(state, tuple) and len(state) == 2):
            raise ValueError("state must be STPNState(h, F) or None")
        h, F = state
        H, D = self.hidden_size, self.synapse_size
        for name, value in (("state.h", h), ("state.F", F)):
            if not isinstance(value, torch.Tensor):
                raise ValueError(f"{name} must be a tensor, got {type(value).__name__}")
        if tuple(h.shape) != (B, H):
            raise ValueError(f"state.h has shape {tuple(h.shape)}, expected {(B, H)}")
        if tuple(F.shape) != (B, H, D):
            raise ValueError(f"state.F has shape {tuple(F.shape)}, expected {(B, H, D)}")
        self._check_dtype_and_device("state.h", h)
        self._check_dtype_and_device("state.F", F)
        return STPNState(h, F)

    def _check_dtype_and_device(self, name: str, tensor: torch.Tensor) -> None:
        # Mixed dtypes or devices would fail deep inside the kernels with torch's own errors.
        dtype, device = self.weight.dtype, self.weight.device
        if tensor.dtype != dtype or tensor.device != device:
            raise ValueError(
                f"{name} has dtype {tensor.dtype} on device {tensor.device}, expected {dtype} on "
                f"{device} (the layer's parameters); move one with .to(dtype=..., device=...)"
            )

    def forward(
        self,
        x: torch.Tensor,
        state: STPNState | None = None,
        return_power: bool = False,
        *,
        seq_lens: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, STPNState] | tuple[torch.Tensor, STPNState, torch.Tensor]:
        """x (B, T, I) -> out (B, T, H), STPNState, and with `return_power` the power (B, T).

        `seq_lens` (B,) gives each sample's number of valid steps when x is zero-padded: the
        layer stops each sample there (no work on the padding), returns zero outputs and power
        on the padding, and the state reached after the sample's last valid step.
        """
        h, F = self._check_inputs(x, state)
        out, h, F, power = IMPLEMENTATIONS[self.implementation](
            x,
            h,
            F,
            self.weight,
            self.bias,
            self.weight_lambda,
            self.weight_gamma,
            recurrent=self.recurrent,
            normalize=self.normalize,
            return_power=return_power,
            seq_lens=seq_lens,
            **self._variant_kwargs(),
        )
        if return_power:
            return out, STPNState(h, F), power
        return out, STPNState(h, F)

    def _variant_kwargs(self) -> dict:
        # Only the options that are on: the default call stays the plain one.
        kwargs: dict = {}
        if self.f_clamp is not None:
            kwargs["f_clamp"] = self.f_clamp
        if self.post_update_norm:
            kwargs["post_update_norm"] = True
        return kwargs

    def extra_repr(self) -> str:
        variants = ""
        if self.f_clamp is not None:
            variants += f", f_clamp={self.f_clamp}"
        if self.post_update_norm:
            variants += ", post_update_norm=True"
        if self.weight_init != "paper":
            variants += f", weight_init={self.weight_init!r}"
        return (
            f"{self.input_size}, {self.hidden_size}, recurrent={self.recurrent}, "
            f"plasticity={self.plasticity!r}, normalize={self.normalize}, "
            f"bias={self.bias is not None}, implementation={self.implementation!r}{variants}"
        )
