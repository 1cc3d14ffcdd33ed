"""The plastic-synapse baselines of the STPN paper, and two later rules, as pure-torch layers.

Each layer runs like `torch.nn.LSTM(batch_first=True)`: `out, state = layer(x, state)` with
x (B, T, I), out (B, T, H) and `state` a NamedTuple of per-sample tensors (None for zeros);
`layer(x, state, return_power=True)` also returns the synaptic power P_t (B, T) of SPEC
section 1: sum_ij z_t[j]^2 |G_t[i, j]| over the efficacies G_t onto the H hidden neurons that
the step actually applies to its presynaptic vector z_t (slow + plastic part), biases excluded.
Auxiliary output units (a neuromodulator, the inner-loss decoder) are read-outs like the policy
head and are not counted.

- FastWeightsRNN: Ba et al. 2016, fast weights on the recurrent connections (fixed rule).
- ModPlastRNN: Miconi et al. 2019 (Backpropamine), neuromodulated recurrent Hebbian traces.
- HebbFF: Tyulmankov et al. 2022, a feed-forward layer with one uniform Hebbian rule.
- PlasticRNN: Duan et al. 2023, input and recurrent weights with Hebbian or gradient plasticity.

The rules are written from the papers' equations; the choices the papers leave open are stated
in each class.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from rllib_stpn.nn.functional import synaptic_power
from rllib_stpn.nn.stpn import _check_size

PLASTIC_RULES = ("hebbian", "gradient")


def _bmv(G: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Per-sample matrix-vector product: (B, H, D) x (B, D) -> (B, H)."""
    return torch.bmm(G, z.unsqueeze(-1)).squeeze(-1)


def _outer(post: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
    """Per-sample post ⊗ pre: (B, H), (B, D) -> (B, H, D)."""
    return post.unsqueeze(-1) * pre.unsqueeze(-2)


def _check_number(name: str, value: object, low: float, high: float) -> float:
    ok = not isinstance(value, bool) and isinstance(value, int | float)
    if not (ok and math.isfinite(value) and low <= value <= high):
        raise ValueError(f"{name} must be a finite number in [{low}, {high}], got {value!r}")
    return float(value)


class PlasticLayer(nn.Module):
    """Shared plumbing: sizes, zero states, input checks and the loop over time.

    A subclass sets `state_type` (a NamedTuple), `state_shapes()` (per-sample shapes in the
    field order) and `_step`, which maps one time step x_t (B, I) and the state to the output
    (B, H), the next state and, when asked, the power (B,).
    """

    state_type: type[tuple]

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input_size = _check_size("input_size", input_size)
        self.hidden_size = _check_size("hidden_size", hidden_size)

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-sample shape of each state field, in the NamedTuple's order."""
        raise NotImplementedError

    def _step(
        self, x: torch.Tensor, state: tuple, return_power: bool
    ) -> tuple[torch.Tensor, tuple, torch.Tensor | None]:
        raise NotImplementedError

    def initial_state(
        self,
        batch_size: int,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> tuple:
        """Zero state for `batch_size` sequences (the paper's start of every sequence)."""
        ref = next(self.parameters())
        device = ref.device if device is None else device
        dtype = ref.dtype if dtype is None else dtype
        return self.state_type(
            *(
                torch.zeros(batch_size, *s, device=device, dtype=dtype)
                for s in self.state_shapes().values()
            )
        )

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a ValueError unless x is (batch, time >= 1, input_size)."""
        if not isinstance(x, torch.Tensor) or x.dim() != 3:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must have shape (batch, time, {self.input_size}), got {shape}")
        if x.shape[2] != self.input_size:
            raise ValueError(
                f"x has {x.shape[2]} features in its last dimension, "
                f"expected input_size={self.input_size}"
            )
        if x.shape[1] == 0:
            raise ValueError("x has 0 time steps, expected at least 1")

    def _check_state(self, x: torch.Tensor, state: tuple | None) -> tuple:
        self.check_input(x)
        B = x.shape[0]
        if state is None:
            return self.initial_state(B, device=x.device, dtype=x.dtype)
        fields = self.state_type._fields
        if not (isinstance(state, tuple) and len(state) == len(fields)):
            raise ValueError(f"state must be {self.state_type.__name__}{fields} or None")
        for name, value, shape in zip(fields, state, self.state_shapes().values()):
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            if got != (B, *shape):
                raise ValueError(f"state.{name} has shape {got}, expected {(B, *shape)}")
        return self.state_type(*state)

    def forward(
        self, x: torch.Tensor, state: tuple | None = None, return_power: bool = False
    ) -> tuple[torch.Tensor, tuple] | tuple[torch.Tensor, tuple, torch.Tensor]:
        """x (B, T, I) -> out (B, T, H), next state, and with `return_power` the power (B, T)."""
        state = self._check_state(x, state)
        outs, powers = [], []
        for t in range(x.shape[1]):
            out, state, power = self._step(x[:, t], state, return_power)
            outs.append(out)
            powers.append(power)
        if return_power:
            return torch.stack(outs, 1), state, torch.stack(powers, 1)
        return torch.stack(outs, 1), state

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}"


class FastWeightsState(NamedTuple):
    """Fast-weights RNN state: hidden output `h` (B, H) and fast weights `A` (B, H, H)."""

    h: torch.Tensor
    A: torch.Tensor


class FastWeightsRNN(PlasticLayer):
    """RNN with fast weights on the recurrent connections (Ba et al. 2016), one inner step.

    Per step, with state (h_{t-1}, A_{t-1}):

        A_t   = λ A_{t-1} + η h_{t-1} h_{t-1}ᵀ            # fixed, uniform Hebbian rule
        s_t   = W_x x_t + W_h h_{t-1} + b                 # slow "boundary condition"
        h0_t  = tanh(s_t)                                 # preliminary vector
        h_t   = tanh(LN(s_t + A_t h0_t))                  # one inner iteration

    λ = 0.95 and η = 0.5 are Ba et al.'s constants (not trained), as the STPN paper used them;
    LN is layer normalisation with a learned gain and bias. tanh, not ReLU, and no identity
    initialisation of W_h, as in the STPN paper's appendix A.5.1: the slow weights and bias are
    U(-1/√H, 1/√H) like torch.nn.RNN. The fast weights A act on h0_t, so the power is
    sum over x_t with |W_x|, over h_{t-1} with |W_h| and over h0_t with |A_t| (LN gain excluded).
    """

    state_type = FastWeightsState

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        decay: float = 0.95,
        fast_lr: float = 0.5,
        ln_eps: float = 1e-5,
    ) -> None:
        super().__init__(input_size, hidden_size)
        self.decay = _check_number("decay", decay, 0.0, 1.0)
        self.fast_lr = _check_number("fast_lr", fast_lr, -math.inf, math.inf)
        self.ln_eps = _check_number("ln_eps", ln_eps, 0.0, 1.0)
        H, I = self.hidden_size, self.input_size
        self.weight_ih = nn.Parameter(torch.empty(H, I))
        self.weight_hh = nn.Parameter(torch.empty(H, H))
        self.bias = nn.Parameter(torch.empty(H))
        self.ln_weight = nn.Parameter(torch.empty(H))
        self.ln_bias = nn.Parameter(torch.empty(H))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in (self.weight_ih, self.weight_hh, self.bias):
            nn.init.uniform_(p, -bound, bound)
        nn.init.ones_(self.ln_weight)
        nn.init.zeros_(self.ln_bias)

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        H = self.hidden_size
        return {"h": (H,), "A": (H, H)}

    def _step(self, x, state, return_power):
        h_prev, A = state
        A = self.decay * A + self.fast_lr * _outer(h_prev, h_prev)
        s = F.linear(x, self.weight_ih, self.bias) + F.linear(h_prev, self.weight_hh)
        h0 = torch.tanh(s)
        inner = F.layer_norm(
            s + _bmv(A, h0), (self.hidden_size,), self.ln_weight, self.ln_bias, self.ln_eps
        )
        h = torch.tanh(inner)
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

    The simple neuromodulation variant on the recurrent synapses only:

        h_t    = tanh(W_in x_t + (W + α ⊙ Hebb_{t-1}) h_{t-1} + b)
        M_t    = tanh(w_m · h_t + b_m)                               # learned neuromodulator
        Hebb_t = clip(Hebb_{t-1} + M_t h_t h_{t-1}ᵀ, -1, 1)         # Miconi's clipping

    α (H, H) is a trained plasticity coefficient per synapse, so |α ⊙ Hebb| <= |α| bounds each
    plastic part. M_t is one scalar per sample (eta = M). All weights, α included, start as
    U(-1/√H, 1/√H). Power over W_in with x_t and over W + α ⊙ Hebb_{t-1} with h_{t-1}.
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
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        H = self.hidden_size
        return {"h": (H,), "Hebb": (H, H)}

    def _step(self, x, state, return_power):
        h_prev, hebb = state
        G_rec = self.weight_hh + self.alpha * hebb
        h = torch.tanh(F.linear(x, self.weight_ih, self.bias) + _bmv(G_rec, h_prev))
        M = torch.tanh(h @ self.mod_weight + self.mod_bias)
        new_hebb = torch.clamp(hebb + M[:, None, None] * _outer(h, h_prev), -1.0, 1.0)
        power = None
        if return_power:
            power = synaptic_power(x, self.weight_ih) + synaptic_power(h_prev, G_rec)
        return h, ModPlastState(h, new_hebb), power


class HebbFFState(NamedTuple):
    """HebbFF state: the plastic matrix `A` (B, H, I)."""

    A: torch.Tensor


class HebbFF(PlasticLayer):
    """Feed-forward Hebbian layer of Tyulmankov et al. 2022 (HebbFF).

        h_t     = σ((W + A_t) x_t + b)                  # σ: sigmoid, as in HebbFF
        A_{t+1} = λ A_t + η h_t x_tᵀ                    # one scalar λ and η for all synapses

    λ = sigmoid(ρ) stays in (0, 1) (ρ trained, starting at λ = 0.9); η is a trained scalar,
    starting at 0 so that the layer starts as a plain feed-forward layer and learns the sign of
    its rule (Tyulmankov et al. found an anti-Hebbian η < 0). W and b start as U(-1/√H, 1/√H),
    like STPNf. This is STPNf with uniform plasticity and none of the STPN's stabilisation
    (no normalisation), as the STPN paper describes it. Power over W + A_t with x_t.
    """

    state_type = HebbFFState

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        self.weight = nn.Parameter(torch.empty(self.hidden_size, self.input_size))
        self.bias = nn.Parameter(torch.empty(self.hidden_size))
        self.retention_logit = nn.Parameter(torch.empty(()))
        self.eta = nn.Parameter(torch.empty(()))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)
        nn.init.constant_(self.retention_logit, math.log(0.9 / 0.1))
        nn.init.zeros_(self.eta)

    @property
    def retention(self) -> torch.Tensor:
        """λ in (0, 1)."""
        return torch.sigmoid(self.retention_logit)

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"A": (self.hidden_size, self.input_size)}

    def _step(self, x, state, return_power):
        (A,) = state
        G = self.weight + A
        h = torch.sigmoid(_bmv(G, x) + self.bias)
        new_A = self.retention * A + self.eta * _outer(h, x)
        power = synaptic_power(x, G) if return_power else None
        return h, HebbFFState(new_A), power


class PlasticRNNState(NamedTuple):
    """PlasticRNN state: hidden output `h` (B, H) and plastic weights `P` (B, H, I + H)."""

    h: torch.Tensor
    P: torch.Tensor


class PlasticRNN(PlasticLayer):
    """RNN with plastic input and recurrent weights (Duan et al., ICLR 2023, PlasticRNNs).

    With z_t = [x_t; h_{t-1}] and the slow weights W = [W_ih, W_hh] (H, I + H):

        h_t  = tanh((W + P_{t-1}) z_t + b)
        η_t  = f(w_η · h_t + b_η)                        # neuromodulated learning rate
        ΔP_t = h_t ⊗ z_t                                  # rule="hebbian"  (post ⊗ pre)
             = -∂L_t/∂P_{t-1}                            # rule="gradient"
        ΔP_t ← ΔP_t · min(1, c / ||ΔP_t||)               # update-norm clip, c = `clip`
        P_t  = λ P_{t-1} + η_t ΔP_t,    λ = sigmoid(ρ)   # learned retention

    For the gradient rule the inner loss is the network's own reconstruction of its input from
    its output through a learned linear decoder (R, r), L_t = ½ ||R h_t + r - x_t||²: the
    plastic weights move so that h_t holds what x_t was, and BPTT trains R, r and every other
    parameter through that update (`torch.autograd.grad(..., create_graph=True)`). The
    gradient is taken with autograd even where the caller disabled it (RLlib samples under
    `torch.no_grad()`); then nothing returned carries a graph.

    f is tanh for the Hebbian rule (its sign turns it anti-Hebbian) and sigmoid for the
    gradient rule (a descent step). The input-to-hidden and hidden-to-hidden plastic weights
    are kept as one matrix P over z_t (like STPNr's F), so one λ and one clip serve both.
    Slow weights, bias and the η and decoder weights start as U(-1/√H, 1/√H); λ starts at 0.9.
    Power over W + P_{t-1} with z_t (the decoder and η units are read-outs, not counted).
    """

    state_type = PlasticRNNState

    def __init__(
        self, input_size: int, hidden_size: int, *, rule: str = "hebbian", clip: float = 1.0
    ) -> None:
        super().__init__(input_size, hidden_size)
        if rule not in PLASTIC_RULES:
            raise ValueError(f"rule must be one of {PLASTIC_RULES}, got {rule!r}")
        self.rule = rule
        self.clip = _check_number("clip", clip, 1e-12, math.inf)
        H, I = self.hidden_size, self.input_size
        self.weight = nn.Parameter(torch.empty(H, I + H))
        self.bias = nn.Parameter(torch.empty(H))
        self.lr_weight = nn.Parameter(torch.empty(H))
        self.lr_bias = nn.Parameter(torch.empty(()))
        self.retention_logit = nn.Parameter(torch.empty(()))
        if rule == "gradient":
            self.decoder_weight = nn.Parameter(torch.empty(I, H))
            self.decoder_bias = nn.Parameter(torch.empty(I))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)
        nn.init.constant_(self.retention_logit, math.log(0.9 / 0.1))

    @property
    def retention(self) -> torch.Tensor:
        """λ in (0, 1)."""
        return torch.sigmoid(self.retention_logit)

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        H = self.hidden_size
        return {"h": (H,), "P": (H, self.input_size + H)}

    def inner_loss_grad(self, pre: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """∂L/∂pre (B, H) for L = ½ Σ_b ||R tanh(pre_b) + r - x_b||², built for double backward.

        ∂L/∂P_{t-1} = (∂L/∂pre) ⊗ z_t exactly, since pre is linear in P_{t-1}. With grad mode
        off (or in inference mode) the gradient is still computed, on a detached copy.
        """
        create_graph = torch.is_grad_enabled()
        with torch.inference_mode(False), torch.enable_grad():
            if create_graph and pre.requires_grad:
                probe = pre
            else:  # no graph to extend: differentiate on a leaf (a normal tensor, not inference)
                create_graph = create_graph and any(
                    p.requires_grad for p in (self.decoder_weight, self.decoder_bias)
                )
                probe, x = pre.detach().clone().requires_grad_(), x.clone()
            recon = F.linear(torch.tanh(probe), self.decoder_weight, self.decoder_bias)
            loss = 0.5 * (recon - x).pow(2).sum()
            (grad,) = torch.autograd.grad(loss, probe, create_graph=create_graph)
        return grad if create_graph else grad.detach()

    def _step(self, x, state, return_power):
        h_prev, P = state
        z = torch.cat([x, h_prev], dim=-1)
        G = self.weight + P
        pre = _bmv(G, z) + self.bias
        h = torch.tanh(pre)
        mod = h @ self.lr_weight + self.lr_bias
        if self.rule == "hebbian":
            eta, delta = torch.tanh(mod), _outer(h, z)
        else:
            eta, delta = torch.sigmoid(mod), -_outer(self.inner_loss_grad(pre, x), z)
        norm = torch.linalg.vector_norm(delta, dim=(1, 2))
        scale = self.clip / torch.clamp(norm, min=self.clip)  # 1 below the threshold
        new_P = self.retention * P + (eta * scale)[:, None, None] * delta
        power = synaptic_power(z, G) if return_power else None
        return h, PlasticRNNState(h, new_P), power

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rule={self.rule!r}, clip={self.clip}"
