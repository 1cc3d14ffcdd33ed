"""Plain autograd STPN sequence op: the readable reference of SPEC section 1.

Every other implementation (the fused op) is tested against this one.
"""

from __future__ import annotations

import torch

# Added to the per-neuron norm. The authors' 1e-16 is representable in float32, but a zero row
# (W + F = 0) would then divide 0 by 1e-16; 1e-12 keeps that and its gradient finite in fp32.
NORM_EPS = 1e-12


def synaptic_power(z: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """P = sum_ij z[..., j]^2 |G[i, j]| (SPEC section 1): the power of efficacies G (H, D),
    shared by the batch, or (B, H, D), one per sample, applied to presynaptic vectors z (..., D).

    The one definition every core's power uses; with a shared G the sum over the rows i is
    taken once, on |G|. Returns z's shape without its last dimension.
    """
    zz = z * z
    if G.dim() == 2:
        return zz @ G.abs().sum(0)
    return torch.einsum("bhd,bd->b", G.abs(), zz)


def needs_autograd(*tensors: torch.Tensor | None) -> bool:
    """Whether a backward may follow (the fused ops take a lighter path when not)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def apply_sequence_function(
    function: type[torch.autograd.Function],
    args: tuple,
    recurrent: bool,
    normalize: bool,
    return_power: bool,
    *variant: object,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """`function.apply` of a fused op, with power None when not asked for (the common contract).

    `variant` is (f_clamp, post_update_norm), passed on after the three flags.
    """
    res = function.apply(*args, recurrent, normalize, return_power, *variant)
    return res if return_power else (*res, None)


def lengths_or_none(seq_lens: torch.Tensor | None, B: int, T: int) -> torch.Tensor | None:
    """Per-sample step counts as a CPU int64 (B,) tensor, or None when every sample runs T steps.

    Steps at or after a sample's length are padding: the ops skip them, return zero outputs
    and power there, and return the state reached after the sample's last step.
    """
    if seq_lens is None:
        return None
    lens = torch.as_tensor(seq_lens).reshape(-1).to("cpu", torch.int64)
    if lens.numel() != B or bool(((lens < 0) | (lens > T)).any()):
        raise ValueError(f"seq_lens must hold {B} lengths in [0, {T}], got {lens.tolist()}")
    return None if bool((lens == T).all()) else lens.contiguous()


def last_hidden(out: torch.Tensor, h0: torch.Tensor, lens: torch.Tensor | None) -> torch.Tensor:
    """h after each sample's last step: out[b, len_b - 1], or h0[b] for a sample of length 0."""
    if lens is None:
        return out[:, -1].clone()
    index = (lens - 1).clamp_min(0).to(out.device)
    last = out[torch.arange(out.shape[0], device=out.device), index]
    return torch.where((lens > 0).to(out.device).unsqueeze(-1), last, h0)


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
    seq_lens: torch.Tensor | None = None,
    f_clamp: float | None = None,
    post_update_norm: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Run T STPN steps with autograd; returns (out (B,T,H), h (B,H), F (B,H,D), power (B,T)).

    With `seq_lens`, sample b stops after seq_lens[b] steps: its state is frozen from then on
    and its outputs and power are zero (written as masking, to stay the readable reference).

    The authors' variants (docs/fidelity.md, "STPN layer variants"): `f_clamp` c clamps the
    updated F to [-c, c]; `post_update_norm` updates the un-normalised F and then divides the
    result by ||W + F|| per row (their plastic_weight_norm time "post"), instead of updating
    F / n_t. The power is always taken over the efficacy applied to the input, Ĝ_t.
    """
    lens = lengths_or_none(seq_lens, x.shape[0], x.shape[1])
    outs, powers = [], []
    for t in range(x.shape[1]):
        h_prev, F_prev = h, F
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
            powers.append(synaptic_power(z, G_hat))
        F_kept = F if post_update_norm else F_hat
        F = weight_lambda * F_kept + weight_gamma * (h.unsqueeze(-1) * z.unsqueeze(-2))
        if f_clamp is not None:
            F = torch.clamp(F, -f_clamp, f_clamp)
        if post_update_norm:
            F = F / (torch.linalg.vector_norm(weight + F, dim=-1, keepdim=True) + NORM_EPS)
        if lens is not None:
            active = (lens > t).to(x.device).unsqueeze(-1)  # (B, 1)
            if return_power:
                powers[-1] = powers[-1] * active.squeeze(-1)
            outs.append(h * active)
            h = torch.where(active, h, h_prev)
            F = torch.where(active.unsqueeze(-1), F, F_prev)
            continue
        outs.append(h)
    power = torch.stack(powers, dim=1) if return_power else None
    return torch.stack(outs, dim=1), h, F, power
