"""The authors' STPN variants (docs/fidelity.md, "STPN layer variants"): option checks and the
pure-torch backward of the maps they add after the Hebbian update.

Their code (NeuromorphicComputing/stpn, Scripts/STPLayers.py) clamps the updated F to [-c, c]
(`plastic_weight_clamp_val`) and, in the maze, normalises it after the update
(`plastic_weight_norm` time "post"). Per neuron row, with α = 1/n_t (Algorithm 1) or 1 (post):

    U = Λ ⊙ α F_t + Γ ⊙ h_t z_tᵀ,   C = clamp(U, -c, c),   F_t+1 = C / m  (post) or C,
    m = ||W + C|| + eps

Backward, from gF' = dL/dF_t+1 to the gradient of U (which the step's own backward then takes in
place of gF', with α in place of 1/n in its update terms):

    k  = -(Σ_j gF' C) / (m² ||W + C||)        (0 where ||W + C|| = 0)
    dW += k (W + C)
    gU = [-c <= U <= c] ⊙ (gF' / m + k (W + C))     (m = 1, k = 0 without post)

The mask passes the gradient where torch.clamp does (bounds included). U is recomputed from F_t,
h_t and z_t; only ||W + C|| is kept per step.
"""

from __future__ import annotations

import torch

from rllib_stpn.nn.functional import NORM_EPS

WEIGHT_INITS = ("paper", "input")


def check_f_clamp(f_clamp: object) -> float | None:
    """`f_clamp` as a float: None (no clamp) or a positive finite number c (F kept in [-c, c])."""
    if f_clamp is None:
        return None
    if isinstance(f_clamp, bool) or not isinstance(f_clamp, int | float):
        raise ValueError(f"f_clamp must be None or a positive number, got {f_clamp!r}")
    if not 0.0 < float(f_clamp) < float("inf"):
        raise ValueError(f"f_clamp must be None or a positive finite number, got {f_clamp!r}")
    return float(f_clamp)


def update_grad(
    gF: torch.Tensor,
    F_in: torch.Tensor,
    h: torch.Tensor,
    z: torch.Tensor,
    W: torch.Tensor,
    lam: torch.Tensor,
    gam: torch.Tensor,
    f_clamp: float | None,
    r_m: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(gU (B, H, D), the post-normalisation's dL/dW (H, D) or None) from gF' (B, H, D).

    F_in is α F_t; r_m is ||W + C|| per (sample, neuron) with post-normalisation, else None.
    gF' is not modified.
    """
    U = torch.addcmul(lam * F_in, gam, h.unsqueeze(-1) * z.unsqueeze(1))
    C = U.clamp(-f_clamp, f_clamp) if f_clamp is not None else U.clone()
    dW = None
    if r_m is not None:
        m = r_m + NORM_EPS
        k = -(gF * C).sum(-1) / (m * m * r_m)
        k = torch.where(r_m > 0, k, torch.zeros_like(k)).unsqueeze(-1)
        WC = C.add_(W)
        dW = (WC * k).sum(0)
        gF = torch.addcmul(gF / m.unsqueeze(-1), WC, k)
    if f_clamp is not None:
        gF = gF * ((U >= -f_clamp) & (U <= f_clamp))
    return gF, dW
