"""Plain autograd STPN sequence op: the readable reference of SPEC section 1.

Every other implementation (the fused op) is tested against this one.
"""

from __future__ import annotations

import torch

# Added to the per-neuron norm. The authors' 1e-16 is representable in float32, but a zero row
# (W + F = 0) would then divide 0 by 1e-16; 1e-12 keeps that and its gradient finite in fp32.
NORM_EPS = 1e-12


def needs_autograd(*tensors: torch.Tensor | None) -> bool:
    """Whether a backward may follow (the fused ops take a lighter path when not)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def apply_sequence_function(
    function: type[torch.autograd.Function],
    args: tuple,
    recurrent: bool,
    normalize: bool,
    return_power: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """`function.apply` of a fused op, with power None when not asked for (the common contract)."""
    res = function.apply(*args, recurrent, normalize, return_power)
    return res if return_power else (*res, None)


def stpn_sequence_reference(
    x: torch.Tensor,
    h: torch.Tensor,
    F: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    weight_lambda: torch.Tensor,
    weight_gamma: torch.Tensor,
    *,
    recurrent: bool,
    normalize: bool,
    return_power: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Run T STPN steps with autograd; returns (out (B,T,H), h (B,H), F (B,H,D), power (B,T))."""
    outs, powers = [], []
    for t in range(x.shape[1]):
        z = torch.cat([x[:, t], h], dim=-1) if recurrent else x[:, t]  # (B, D)
        G = weight + F  # (B, H, D)
        if normalize:
            n = torch.linalg.vector_norm(G, dim=-1, keepdim=True) + NORM_EPS  # (B, H, 1)
            G_hat, F_hat = G / n, F / n
        else:
            G_hat, F_hat = G, F
        pre = torch.einsum("bhd,bd->bh", G_hat, z)
        if bias is not None:
            pre = pre + bias
        h = torch.tanh(pre)
        if return_power:
            powers.append(torch.einsum("bhd,bd->b", G_hat.abs(), z * z))
        F = weight_lambda * F_hat + weight_gamma * (h.unsqueeze(-1) * z.unsqueeze(-2))
        outs.append(h)
    power = torch.stack(powers, dim=1) if return_power else None
    return torch.stack(outs, dim=1), h, F, power
