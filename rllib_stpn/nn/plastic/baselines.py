"""The STPN paper's comparison models as its authors ran them (Scripts/STPLayers.py of
NeuromorphicComputing/stpn): Fast Weights, Modplast and HebbFF.

Written from the equations of that file (docs/fidelity.md, "Comparison cores"); no code is
taken from it. Each class states its equations, its initialisation and the source's settings.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from rllib_stpn.nn.plastic.base import (
    PlasticLayer,
    check_number,
    plus_bmv,
    plus_outer,
    synaptic_power,
)


class FastWeightsState(NamedTuple):
    """Fast-weights RNN state: hidden output `h` (B, H) and fast weights `A` (B, H, H)."""

    h: torch.Tensor
    A: torch.Tensor


class FastWeightsRNN(PlasticLayer):
    """RNN with fast weights on the recurrent connections (Ba et al. 2016), one inner step (S=1).

    Per step, with state (h_{t-1}, A_{t-1}), as the authors' `FastWeights` layer:

        A_t   = λ A_{t-1} + η h_{t-1} h_{t-1}ᵀ            # fixed, uniform Hebbian rule
        s_t   = W_x x_t + W_h h_{t-1} + b                 # slow "boundary condition"
        h0_t  = tanh(LN(s_t))                             # preliminary vector, layer-normed too
        h_t   = tanh(LN(s_t + A_t h0_t))                  # one inner iteration

    λ = 0.9 and η = 0.5 are the authors' ART_FW config (fixed, not trained). LN is one layer norm
    (learned gain and bias, shared by both uses). Every parameter, the LN gain and bias
    included, starts as U(-1/√H, 1/√H): the source's `init_weights` initialises all of the
    layer's parameters that way. Power: x_t with |W_x|, h_{t-1} with |W_h| and h0_t with |A_t|
    (the source's `forward_energy_consumption`; LN gain and biases excluded).
    """

    state_type = FastWeightsState

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        decay: float = 0.9,
        fast_lr: float = 0.5,
        ln_eps: float = 1e-5,
    ) -> None:
        super().__init__(input_size, hidden_size)
        self.decay = check_number("decay", decay, 0.0, 1.0)
        self.fast_lr = check_number("fast_lr", fast_lr, -math.inf, math.inf)
        self.ln_eps = check_number("ln_eps", ln_eps, 0.0, 1.0)
        H, I = self.hidden_size, self.input_size
        self.weight_ih = nn.Parameter(torch.empty(H, I))
        self.weight_hh = nn.Parameter(torch.empty(H, H))
        self.bias = nn.Parameter(torch.empty(H))
        self.ln_weight = nn.Parameter(torch.empty(H))
        self.ln_bias = nn.Parameter(torch.empty(H))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        H = self.hidden_size
        return {"h": (H,), "A": (H, H)}

    def _ln(self, a: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(a, (self.hidden_size,), self.ln_weight, self.ln_bias, self.ln_eps)

    def _drive(self, x):
        return F.linear(x, self.weight_ih, self.bias)  # W_x x_t + b for every t

    def _step(self, x, drive, state, return_power):
        h_prev, A = state
        # λ A + η h hᵀ and s + A h0 as single batched products (fewer ops in the time loop).
        A = plus_outer(A, h_prev, h_prev, beta=self.decay, alpha=self.fast_lr)
        s = torch.addmm(drive, h_prev, self.weight_hh.t())
        h0 = torch.tanh(self._ln(s))
        h = torch.tanh(self._ln(plus_bmv(s, A, h0)))
        power = None
        if return_power:
            power = (
                synaptic_power(x, self.weight_ih)
                + synaptic_power(h_prev, self.weight_hh)
                + synaptic_power(h0, A)
            )
        return h, FastWeightsState(h, A), power

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, decay={self.decay}, fast_lr={self.fast_lr}"


class ModPlastState(NamedTuple):
    """Backpropamine state: hidden output `h` (B, H) and Hebbian trace `Hebb` (B, H, H)."""

    h: torch.Tensor
    Hebb: torch.Tensor


class ModPlastRNN(PlasticLayer):
    """Neuromodulated differentiable plasticity (Miconi et al. 2019, "Backpropamine").

    The authors' `CustomMiconiNetwork` with net_type "modplast", da "tanh", addpw 3 (their ART
    and maze configs): plastic recurrent synapses, one neuromodulator per sample,

        h_t    = tanh(W_in x_t + b + (W + α ⊙ Hebb_{t-1}) h_{t-1})
        M_t    = tanh(w_m · h_t + b_m)
        Hebb_t = clip(Hebb_{t-1} + M_t h_t h_{t-1}ᵀ, -1, 1)          # hard clamp, no decay

    Initialisation as the source: W and α are 0.01·U(0, 1) per synapse; W_in, b (a
    torch.nn.Linear from x) and w_m, b_m (a torch.nn.Linear from h) keep torch's default
    U(-1/√fan_in, 1/√fan_in). Power: x_t with |W_in| and h_{t-1} with |W + α ⊙ Hebb_{t-1}|.
    """

    state_type = ModPlastState

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        H, I = self.hidden_size, self.input_size
        self.weight_ih = nn.Parameter(torch.empty(H, I))
        self.bias = nn.Parameter(torch.empty(H))
        self.weight_hh = nn.Parameter(torch.empty(H, H))
        self.alpha = nn.Parameter(torch.empty(H, H))
        self.mod_weight = nn.Parameter(torch.empty(H))
        self.mod_bias = nn.Parameter(torch.empty(()))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        in_bound = 1.0 / math.sqrt(self.input_size)
        mod_bound = 1.0 / math.sqrt(self.hidden_size)
        nn.init.uniform_(self.weight_ih, -in_bound, in_bound)
        nn.init.uniform_(self.bias, -in_bound, in_bound)
        nn.init.uniform_(self.weight_hh, 0.0, 0.01)
        nn.init.uniform_(self.alpha, 0.0, 0.01)
        nn.init.uniform_(self.mod_weight, -mod_bound, mod_bound)
        nn.init.uniform_(self.mod_bias, -mod_bound, mod_bound)

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        H = self.hidden_size
        return {"h": (H,), "Hebb": (H, H)}

    def _drive(self, x):
        return F.linear(x, self.weight_ih, self.bias)  # W_in x_t + b for every t

    def _step(self, x, drive, state, return_power):
        h_prev, hebb = state
        # (W + α ⊙ Hebb) h = W h + (α ⊙ Hebb) h: the shared W as one product for the batch.
        plastic = self.alpha * hebb
        pre = torch.addmm(drive, h_prev, self.weight_hh.t())
        h = torch.tanh(plus_bmv(pre, plastic, h_prev))
        M = torch.tanh(h @ self.mod_weight + self.mod_bias)
        new_hebb = plus_outer(hebb, M.unsqueeze(1) * h, h_prev)
        new_hebb = torch.clamp(new_hebb, -1.0, 1.0)
        power = None
        if return_power:
            G_rec = self.weight_hh + plastic
            power = synaptic_power(x, self.weight_ih) + synaptic_power(h_prev, G_rec)
        return h, ModPlastState(h, new_hebb), power


class HebbFFState(NamedTuple):
    """HebbFF state: the plastic matrix `A` (B, H, I)."""

    A: torch.Tensor


class HebbFF(PlasticLayer):
    """Feed-forward Hebbian layer of Tyulmankov et al. 2022 (HebbFF), as the authors' `HebbFF`.

        h_t     = σ((W + A_t) x_t + b)                  # σ: sigmoid
        A_{t+1} = λ A_t + η h_t x_tᵀ                    # one scalar λ and η for all synapses
        λ = sigmoid(ρ),  η = -exp(κ)                    # λ in (0, 1); η < 0: anti-Hebbian

    ρ and κ are trained, starting at λ = 0.99 and η = -5/H (the values of Tyulmankov et al.'s
    own code, which the source follows); the rule is forced anti-Hebbian. No clamp, no
    normalisation. W and b start as U(-1/√I, 1/√I) (the source's STPNf initialisation by input
    size). Power: x_t with |W + A_t|.
    """

    state_type = HebbFFState

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        self.weight = nn.Parameter(torch.empty(self.hidden_size, self.input_size))
        self.bias = nn.Parameter(torch.empty(self.hidden_size))
        self.retention_logit = nn.Parameter(torch.empty(()))
        self.log_neg_eta = nn.Parameter(torch.empty(()))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.input_size)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)
        nn.init.constant_(self.retention_logit, math.log(0.99 / 0.01))
        nn.init.constant_(self.log_neg_eta, math.log(5.0 / self.hidden_size))

    @property
    def retention(self) -> torch.Tensor:
        """λ in (0, 1)."""
        return torch.sigmoid(self.retention_logit)

    @property
    def eta(self) -> torch.Tensor:
        """The (negative) Hebbian rate η."""
        return -torch.exp(self.log_neg_eta)

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"A": (self.hidden_size, self.input_size)}

    def _drive(self, x):
        return F.linear(x, self.weight, self.bias)  # W x_t + b for every t

    def _step(self, x, drive, state, return_power):
        (A,) = state
        h = torch.sigmoid(plus_bmv(drive, A, x))
        # λ A + η h xᵀ, with η folded into h: one batched product.
        new_A = plus_outer(self.retention * A, self.eta * h, x)
        power = synaptic_power(x, self.weight + A) if return_power else None
        return h, HebbFFState(new_A), power
