"""PlasticRNNs (Duan et al., ICLR 2023; github yuvenduan/PlasticRNNs) as one RLlib-ready layer.

Written from the equations of that repository's models/model.py (`SimpleRNN` with its plain
RNN cell) and models/plastic/meta.py (`update_floatparam`); no code is taken from it. The
equations, the initialisation and where this differ from the source are in the class docstring
and docs/fidelity.md ("Comparison cores").
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from rllib_stpn.nn.plastic.base import (
    PlasticLayer,
    bmv,
    check_number,
    outer,
    plus_bmv,
    synaptic_power,
)

PLASTIC_RULES = ("hebbian", "gradient")


class PlasticRNNState(NamedTuple):
    """PlasticRNN state: hidden `h` (B, H) and all plastic parts `P` (B, N) as one flat vector."""

    h: torch.Tensor
    P: torch.Tensor


class PlasticRNN(PlasticLayer):
    """Input layer, ReLU RNN cell and read-out whose weights are all plastic (PlasticRNNs).

    Every plastic tensor X (weights, and for the gradient rule biases) is applied as X + P_X,
    the slow X trained by BPTT and P_X (per sample, zero at the start) changed every step:

        u_t = relu((W_in + P_in) x_t + b_in)                          # plastic in_fc
        h_t = relu((W_c + P_c) [u_t; h_{t-1}] + b_i + b_h)            # plastic RNN cell
        y_t = (W_out + P_out) h_t + b_out                             # plastic out_fc, O units
        out_t = y_t[:H]           # the task units, read by the policy and value heads

        g_t   = 2 σ(y_t[-1])                                          # one modulatory unit
        Δ_X   = post ⊗ pre of X's layer                               # rule="hebbian"
              = ∂L_t/∂X,  L_t = mean_k (ω_k y_t[k])²                  # rule="gradient"
        s_t   = min(1, c / ||Δ||)                                     # one norm over all X
        P_X  <- (1 - 0.1 g_t) P_X + 0.1 g_t s_t (Λ_X ⊙ Δ_X)

    O = H + 4 + 1: the H task units, the source's 4 extra units (`extra_dim`) and the
    modulatory unit; all enter the inner loss. Λ_X are learned signed per-synapse rates,
    ω (O) the learned loss weights (`out_weight`), c = 1 (`inner_grad_clip`), 0.1 the source's
    `p_lr` = `p_wd`. The update is +rate·gradient: the signs of Λ decide ascent or descent.
    The Hebbian rule's pre/post pairs are (x_t, u_t), ([u_t; h_{t-1}], h_t) and (h_t, y_t).

    Initialisation as the source: every slow weight and bias U(-1/√fan_out, 1/√fan_out) (1/√H
    for in_fc and the cell, 1/√O for out_fc), Λ ~ U(-1, 1), ω = 1.

    Power: x_t with |W_in + P_in| and [u_t; h_{t-1}] with |W_c + P_c|, the synapses onto the
    layer's neurons; out_fc is the read-out (like the paper's policy head), not counted.

    Deviations (docs/fidelity.md): the inner loss is a mean over one sample's O units (the
    source also averages over its batch, which would tie one sequence's update to how many
    sequences are batched with it); under the Hebbian rule the biases are not plastic and ω is
    absent (the source's Hebbian Δ of a bias is 0, so its plastic part stays at its zero start,
    and ω only enters the unused loss); ∂L_t/∂X is computed in closed form rather than with
    autograd, so it also runs under torch.no_grad() (RLlib's sampling) and BPTT differentiates
    it like the source's `create_graph=True`.
    """

    state_type = PlasticRNNState

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        rule: str = "hebbian",
        clip: float = 1.0,
        plastic_lr: float = 0.1,
        plastic_decay: float = 0.1,
        extra_outputs: int = 4,
    ) -> None:
        super().__init__(input_size, hidden_size)
        if rule not in PLASTIC_RULES:
            raise ValueError(f"rule must be one of {PLASTIC_RULES}, got {rule!r}")
        self.rule = rule
        self.clip = check_number("clip", clip, 1e-12, math.inf)
        self.plastic_lr = check_number("plastic_lr", plastic_lr, 0.0, math.inf)
        # The decay factor is 1 - 2σ(m)·plastic_decay, which stays in [0, 1] up to 0.5.
        self.plastic_decay = check_number("plastic_decay", plastic_decay, 0.0, 0.5)
        if type(extra_outputs) is not int or extra_outputs < 0:
            raise ValueError(f"extra_outputs must be an int >= 0, got {extra_outputs!r}")
        self.extra_outputs = extra_outputs
        H, I = self.hidden_size, self.input_size
        self.out_features = O = H + extra_outputs + 1
        self.in_weight = nn.Parameter(torch.empty(H, I))
        self.in_bias = nn.Parameter(torch.empty(H))
        self.rec_weight = nn.Parameter(torch.empty(H, 2 * H))  # [i_fc | h_fc] over [u; h]
        self.rec_bias = nn.Parameter(torch.empty(2, H))  # i_fc's and h_fc's biases
        self.out_weight = nn.Parameter(torch.empty(O, H))
        self.out_bias = nn.Parameter(torch.empty(O))
        names = ("in_weight", "rec_weight", "out_weight")
        if rule == "gradient":
            names = ("in_weight", "in_bias", "rec_weight", "rec_bias", "out_weight", "out_bias")
            self.loss_weight = nn.Parameter(torch.empty(O))
        self.plastic_names = names
        self.rate = nn.ParameterDict(
            {n: nn.Parameter(torch.empty_like(getattr(self, n))) for n in names}
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for name, fan_out in (("in", self.hidden_size), ("rec", self.hidden_size)):
            for p in (getattr(self, f"{name}_weight"), getattr(self, f"{name}_bias")):
                nn.init.uniform_(p, -1 / math.sqrt(fan_out), 1 / math.sqrt(fan_out))
        bound = 1 / math.sqrt(self.out_features)
        nn.init.uniform_(self.out_weight, -bound, bound)
        nn.init.uniform_(self.out_bias, -bound, bound)
        for p in self.rate.values():
            nn.init.uniform_(p, -1.0, 1.0)
        if self.rule == "gradient":
            nn.init.ones_(self.loss_weight)

    def plastic_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shape of each plastic part, in their order within the flat state P."""
        return {n: tuple(getattr(self, n).shape) for n in self.plastic_names}

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        n = sum(math.prod(s) for s in self.plastic_shapes().values())
        return {"h": (self.hidden_size,), "P": (n,)}

    def _effective(self, P: torch.Tensor) -> dict[str, torch.Tensor]:
        """Slow + plastic part of every tensor the step applies, per sample."""
        B, eff, i = P.shape[0], {}, 0
        for name, shape in self.plastic_shapes().items():
            n = math.prod(shape)
            eff[name] = getattr(self, name) + P[:, i : i + n].reshape(B, *shape)
            i += n
        for name in ("in_bias", "rec_bias", "out_bias"):
            eff.setdefault(name, getattr(self, name))
        return eff

    def _step(self, x, drive, state, return_power):
        h_prev, P = state
        H, e = self.hidden_size, self._effective(P)
        u_pre = plus_bmv(e["in_bias"], e["in_weight"], x)
        u = torch.relu(u_pre)
        zc = torch.cat([u, h_prev], dim=-1)
        h_pre = plus_bmv(e["rec_bias"].sum(-2), e["rec_weight"], zc)
        h = torch.relu(h_pre)
        y = plus_bmv(e["out_bias"], e["out_weight"], h)
        if self.rule == "hebbian":
            delta = {
                "in_weight": outer(u, x),
                "rec_weight": outer(h, zc),
                "out_weight": outer(y, h),
            }
        else:  # backward of L = mean_k (ω_k y_k)² through the step, one sample at a time
            g_y = 2.0 * self.loss_weight.square() * y / self.out_features
            g_h = bmv(e["out_weight"].transpose(-1, -2), g_y) * (h_pre > 0)
            g_u = bmv(e["rec_weight"][..., :H].transpose(-1, -2), g_h) * (u_pre > 0)
            delta = {
                "in_weight": outer(g_u, x),
                "in_bias": g_u,
                "rec_weight": outer(g_h, zc),
                "rec_bias": g_h.unsqueeze(1).expand(-1, 2, -1),
                "out_weight": outer(g_y, h),
                "out_bias": g_y,
            }
        flat = torch.cat([delta[n].reshape(x.shape[0], -1) for n in self.plastic_names], 1)
        rates = torch.cat([self.rate[n].reshape(-1) for n in self.plastic_names])
        norm = torch.linalg.vector_norm(flat, dim=1)
        gate = 2.0 * torch.sigmoid(y[:, -1])
        step = self.plastic_lr * gate * self.clip / torch.clamp(norm, min=self.clip)
        new_P = (1.0 - self.plastic_decay * gate)[:, None] * P + step[:, None] * rates * flat
        power = None
        if return_power:
            power = synaptic_power(x, e["in_weight"]) + synaptic_power(zc, e["rec_weight"])
        return y[:, :H], PlasticRNNState(h, new_P), power

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rule={self.rule!r}, clip={self.clip}"
