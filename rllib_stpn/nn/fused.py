"""Fused STPN sequence op: a `torch.autograd.Function` with a hand-derived backward.

`stpn_sequence_fused` (what `STPN(implementation="fused")` runs) uses the C++ kernel of
`fused_cpp` for CPU float32/float64 and this module's pure-torch op otherwise; the choice is
silent (see `fused_cpp.available`). Both implement the derivation below.

Same maths as `stpn_sequence_reference` (SPEC section 1), rewritten around the memory traffic on
the (B, H, D) state F, which is what the layer's cost is made of:

* W z is one GEMM for the whole sequence (plus a small (B, H) GEMM per step for h_{t-1}); only
  F z goes through the batched product. G = W + F is never materialised in the forward unless
  the power is requested: ||W + F||^2 = ||W||^2 + 2 W.F + ||F||^2 per row.
* The forward keeps exactly one (B, H, D) tensor per step, F_t, which the backward needs anyway;
  every other saved quantity is (B, T, H). Activations (autograd's several (B, H, D)
  intermediates per step) are not kept.
* The backward walks time in reverse carrying dL/dF (B, H, D) and dL/dh (B, H) in two
  ping-pong (B, H, D) buffers; the free one is the scratch space for the Hebbian products before
  it receives dL/dF_t. Saved states are left intact (gradcheck and retain_graph work), so the op
  peaks near (T + 3)·|F| bytes (F_0..F_T plus two buffers; one more when the power or the final
  F has a gradient).
* Row-wise contractions use `bmm` with a single-row left operand (a GEMM that BLAS runs at
  streaming speed) rather than batched matrix-vector products, which are several times slower
  on CPU.

Derivation, one sample, one step (n = r + eps, r = ||G|| per row i, s = G z, P = sum z^2 |G| / n):

    F' = Λ F / n + Γ h zᵀ,   h = tanh(s / n + b)
    dΛ += gF' ⊙ F / n                      dΓ += gF' ⊙ h zᵀ
    dh += (Γ ⊙ gF') z                      dz += (Γ ⊙ gF')ᵀ h + Gᵀ (dpre / n) + 2 gP z ⊙ |G|ᵀ (1/n)
    dpre = dh (1 - h²)                     db += dpre
    dn = -(Σ_j Λ F gF') / n² - dpre s / n² - gP Σ_j z² |G| / n²
    dG = (dpre / n) zᵀ + (dn / r) G + gP sign(G) z² / n      (dW += dG,  dF = Λ gF' / n + dG)

The authors' variants (f_clamp, post_update_norm) add maps after the update; their backward is
in `rllib_stpn.nn.variants`.
"""

from __future__ import annotations

import torch

from rllib_stpn.nn.functional import (
    NORM_EPS,
    apply_sequence_function,
    lengths_or_none,
    needs_autograd,
)
from rllib_stpn.nn.fused_cpp import stpn_sequence_cpp
from rllib_stpn.nn.fused_cpp import supports as cpp_supports
from rllib_stpn.nn.variants import update_grad


def _rowdot(A: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """(B, H, D) x (H, D) -> (B, H): sum_j A[b, i, j] V[i, j], one GEMM row per neuron."""
    return torch.bmm(V.unsqueeze(1), A.permute(1, 2, 0)).squeeze(1).t()


def _matvec(A: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(B, H, D) x (B, D) -> (B, H): A_b v_b, as a row-vector GEMM (faster than bmv on CPU)."""
    return torch.bmm(v.unsqueeze(1), A.transpose(1, 2)).squeeze(1)


def _vecmat(v: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """(B, H) x (B, H, D) -> (B, D): v_bᵀ A_b."""
    return torch.bmm(v.unsqueeze(1), A).squeeze(1)


def _batch_wsum(w: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """(B, H) weights x (B, H, D) -> (H, D): sum_b w[b, i] A[b, i, :]."""
    return torch.bmm(w.t().unsqueeze(1), A.transpose(0, 1)).squeeze(1)


def _norms(F: torch.Tensor, W: torch.Tensor, W2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """r = ||W + F|| per row from ||F||^2 and W.F (two reads of F, no G); returns (r, n)."""
    F2 = torch.linalg.vector_norm(F, dim=-1).square_()
    r = F2.add_(_rowdot(F, W), alpha=2.0).add_(W2).clamp_min_(0.0).sqrt_()
    return r, r + NORM_EPS


def stpn_sequence_fused_forward(
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
    keep: list | None = None,
    f_clamp: float | None = None,
    post_update_norm: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, dict]:
    """T steps without autograd. With `keep` (a list) it receives F_1..F_{T-1} for the backward.

    Returns out (B, T, H), h_T, F_T, power (B, T) or None, and the small per-step tensors the
    backward needs (n, r, s, the per-neuron power and ||W + C|| of post_update_norm, each
    (B, T, H)).
    """
    B, T, I = x.shape
    H, D = weight.shape
    per_synapse = weight_lambda.dim() > 0
    Wx, Wh = weight[:, :I], weight[:, I:]
    # Input part of W z plus bias for every step at once.
    xW = torch.matmul(x, Wx.t())
    scale_update = normalize and not post_update_norm  # the update takes F / n
    W2 = weight.square().sum(-1) if normalize or post_update_norm else None
    out = x.new_empty(B, T, H)
    S = x.new_empty(B, T, H)
    Ns = x.new_empty(B, T, H) if normalize else None
    Rs = x.new_empty(B, T, H) if normalize else None
    prow = x.new_empty(B, T, H) if return_power else None
    Ms = x.new_empty(B, T, H) if post_update_norm else None
    spare = None  # recycled F buffer when nothing is kept (sampling, no-grad)
    for t in range(T):
        if recurrent:
            z = torch.cat([x[:, t], h], dim=-1)
            s = torch.addmm(xW[:, t], h, Wh.t())
        else:
            z = x[:, t]
            s = xW[:, t].clone()
        s.add_(_matvec(F, z))  # s = G z
        S[:, t] = s
        if return_power or normalize:
            G = torch.add(F, weight) if return_power else None
            if normalize:
                if G is not None:
                    r = torch.linalg.vector_norm(G, dim=-1)
                    n = r + NORM_EPS
                else:
                    r, n = _norms(F, weight, W2)
                Ns[:, t], Rs[:, t] = n, r
            if G is not None:
                p = _matvec(G.abs_(), z * z)
                prow[:, t] = p / n if normalize else p
                del G
        pre = s / n if normalize else s
        if bias is not None:
            pre = pre + bias
        h = torch.tanh(pre)
        out[:, t] = h
        # F' = Λ ⊙ F / n + Γ ⊙ h zᵀ, written into a fresh (or recycled) buffer in 2-4 passes.
        if keep is None and spare is not None:
            Fn = spare
        else:
            Fn = torch.empty_like(F)
        if per_synapse:
            nh = h * n if scale_update else h
            torch.mul(weight_gamma, z.unsqueeze(1), out=Fn)
            Fn.mul_(nh.unsqueeze(-1)).addcmul_(F, weight_lambda)
            if scale_update:
                Fn.mul_(n.reciprocal().unsqueeze(-1))
        else:
            lam_n = weight_lambda / n if scale_update else weight_lambda.expand(B, H)
            torch.mul(F, lam_n.unsqueeze(-1), out=Fn)
            Fn.baddbmm_((weight_gamma * h).unsqueeze(-1), z.unsqueeze(1))
        if f_clamp is not None:
            Fn.clamp_(-f_clamp, f_clamp)
        if post_update_norm:
            r_m, m = _norms(Fn, weight, W2)
            Fn.mul_(m.reciprocal().unsqueeze(-1))
            Ms[:, t] = r_m
        if keep is not None:
            if t < T - 1:
                keep.append(Fn)
        elif t > 0:
            spare = F  # F_t was ours (not the caller's F_0): reuse its memory for F_{t+2}
        F = Fn
    power = prow.sum(-1) if return_power else None
    saved = {"S": S, "N": Ns, "R": Rs, "P": prow, "M": Ms}
    return out, h, F, power, saved


class STPNSequenceFunction(torch.autograd.Function):
    """Autograd wrapper of `stpn_sequence_fused_forward` with the hand-derived backward."""

    @staticmethod
    def forward(
        ctx,
        x: torch.Tensor,
        h0: torch.Tensor,
        F0: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        weight_lambda: torch.Tensor,
        weight_gamma: torch.Tensor,
        recurrent: bool,
        normalize: bool,
        return_power: bool,
        f_clamp: float | None = None,
        post_update_norm: bool = False,
    ):
        keep: list = []
        out, h, F, power, saved = stpn_sequence_fused_forward(
            x,
            h0,
            F0,
            weight,
            bias,
            weight_lambda,
            weight_gamma,
            recurrent=recurrent,
            normalize=normalize,
            return_power=return_power,
            keep=keep,
            f_clamp=f_clamp,
            post_update_norm=post_update_norm,
        )
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, h0, F0, weight, bias, weight_lambda, weight_gamma, out)
        ctx.Fs = keep  # F_1..F_{T-1}, read-only in the backward
        ctx.saved = saved
        ctx.flags = (recurrent, normalize, return_power, f_clamp, post_update_norm)
        h_out = h.clone()  # a separate output: out[:, -1] would be a view of another output
        if power is None:
            return out, h_out, F
        return out, h_out, F, power

    @staticmethod
    def backward(ctx, g_out, g_h, g_F, g_power=None):
        x, h0, F0, W, b, lam, gam, out = ctx.saved_tensors
        Fs = ctx.Fs
        recurrent, normalize, return_power, f_clamp, post_update_norm = ctx.flags
        S, Ns, Rs, prow, Ms = (ctx.saved[k] for k in ("S", "N", "R", "P", "M"))
        scale_update = normalize and not post_update_norm
        B, T, I = x.shape
        H, D = W.shape
        per_synapse = lam.dim() > 0
        needs = ctx.needs_input_grad
        gP = g_power if return_power else None

        dW = torch.zeros_like(W)
        db = torch.zeros(H, dtype=W.dtype, device=W.device)
        dlam = torch.zeros_like(lam)
        dgam = torch.zeros_like(gam)
        dx = torch.empty_like(x) if needs[0] else None
        gh = g_h  # dL/dh_t from the future (through z_{t+1}), plus the given final-state grad
        gF = g_F  # dL/dF_{t+1}; None means zero
        # Two (B, H, D) buffers: one holds dL/dF_{t+1}, the other is scratch for the Hebbian
        # products and then receives dL/dF_t. A third only when the power has a gradient.
        bufs: list[torch.Tensor] = []
        ptmp = None
        for t in range(T - 1, -1, -1):
            F = Fs[t - 1] if t > 0 else F0
            h = out[:, t]
            hp = out[:, t - 1] if t > 0 else h0
            z = torch.cat([x[:, t], hp], dim=-1) if recurrent else x[:, t]
            if normalize:
                n, r = Ns[:, t], Rs[:, t]
                inv_n = n.reciprocal()
            if gF is not None and (f_clamp is not None or post_update_norm):
                # gF' -> the gradient of the unclamped, unnormalised update U (a new tensor).
                alpha = inv_n.unsqueeze(-1) if scale_update else 1.0
                r_m = Ms[:, t] if post_update_norm else None
                gF, dW_m = update_grad(gF, F * alpha, h, z, W, lam, gam, f_clamp, r_m)
                if dW_m is not None:
                    dW += dW_m
            free = [u for u in bufs if u is not gF]
            if free:
                tmp = free[0]
            else:
                tmp = torch.empty_like(F)
                bufs.append(tmp)
            dh = g_out[:, t] if g_out is not None else torch.zeros_like(h)
            if gh is not None:
                dh = dh + gh
            dz = None
            c1 = None  # sum_j Λ F gF' per row
            if gF is not None:
                torch.mul(gF, F, out=tmp)
                if per_synapse:
                    if scale_update:
                        c1 = _rowdot(tmp, lam)
                        dlam += _batch_wsum(inv_n, tmp)
                    else:
                        dlam += tmp.sum(0)
                    torch.mul(gF, z.unsqueeze(1), out=tmp)
                    dgam += _batch_wsum(h, tmp)
                    dh = dh + _rowdot(tmp, gam)
                    torch.mul(gF, gam, out=tmp)
                    dz = _vecmat(h, tmp)
                else:
                    rows = tmp.sum(-1)
                    if scale_update:
                        c1 = lam * rows
                        dlam += (rows * inv_n).sum()
                    else:
                        dlam += rows.sum()
                    gFz = _matvec(gF, z)
                    dgam += (h * gFz).sum()
                    dh = dh + gam * gFz
                    dz = gam * _vecmat(h, gF)
            dpre = dh * (1.0 - h * h)
            db += dpre.sum(0)
            gPt = gP[:, t].unsqueeze(-1) if gP is not None else None
            # G = W + F in the scratch buffer; it becomes dL/dF_t below.
            G = torch.add(F, W, out=tmp)
            if normalize:
                dpre_n = dpre * inv_n
                dn = dpre_n * S[:, t]
                if c1 is not None:
                    dn = dn + c1 * inv_n
                if gPt is not None:
                    dn = dn + gPt * prow[:, t]
                dn = -dn * inv_n
                k = torch.where(r > 0, dn / r, torch.zeros_like(dn))  # d||G||/dG = G / r
                kn = k * n
            else:
                dpre_n = dpre
            dzG = _vecmat(dpre_n, G)
            dz = dzG if dz is None else dz + dzG
            dW.addmm_(dpre_n.t(), z)
            if normalize:
                dW += _batch_wsum(k, G)
            if gPt is not None:
                # P = sum z^2 |G| / n: d/dz through |G|, d/dG through sign(G).
                if ptmp is None:
                    ptmp = torch.empty_like(F)
                torch.abs(G, out=ptmp)
                wP = gPt * inv_n if normalize else gPt.expand(B, H)
                dz = dz + 2.0 * z * _vecmat(wP, ptmp)
                torch.sign(G, out=ptmp).mul_((z * z).unsqueeze(1))
                dW += _batch_wsum(wP, ptmp)
            # dL/dF_t = (Λ gF' + dpre zᵀ + n k G + gP sign(G) z²) / n   (n = 1 unnormalised;
            # with post_update_norm, Λ gF' is added after the division: the update took F)
            if normalize:
                Dt = G.mul_(kn.unsqueeze(-1))
            elif gF is not None:
                Dt = torch.mul(gF, lam, out=G)
            else:
                Dt = G.zero_()
            if scale_update and gF is not None:
                Dt.addcmul_(gF, lam)
            Dt.baddbmm_(dpre.unsqueeze(-1), z.unsqueeze(1))
            if gPt is not None:
                Dt.addcmul_(ptmp, gPt.unsqueeze(-1))
            if normalize:
                Dt.mul_(inv_n.unsqueeze(-1))
                if not scale_update and gF is not None:
                    Dt.addcmul_(gF, lam)
            gF = Dt
            del G, F, tmp
            if dx is not None:
                dx[:, t] = dz[:, :I]
            gh = dz[:, I:] if recurrent else None
        grads_h0 = gh if (needs[1] and recurrent) else None
        if needs[1] and grads_h0 is None:
            grads_h0 = torch.zeros_like(h0)
        return (
            dx,
            grads_h0,
            gF if needs[2] else None,
            dW if needs[3] else None,
            db if (b is not None and needs[4]) else None,
            dlam if needs[5] else None,
            dgam if needs[6] else None,
            None,
            None,
            None,
            None,
            None,
        )


def _fused_torch_full_length(
    args: tuple, recurrent: bool, normalize: bool, return_power: bool, variant: tuple
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    if not needs_autograd(*args):
        # Sampling path: no saved states, F buffers recycled.
        f_clamp, post_update_norm = variant
        out, h, F, power, _ = stpn_sequence_fused_forward(
            *args,
            recurrent=recurrent,
            normalize=normalize,
            return_power=return_power,
            f_clamp=f_clamp,
            post_update_norm=post_update_norm,
        )
        return out, h, F, power
    return apply_sequence_function(
        STPNSequenceFunction, args, recurrent, normalize, return_power, *variant
    )


def stpn_sequence_fused_torch(
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
    """The pure-torch fused op (any device): same contract as `stpn_sequence_fused`.

    With `seq_lens`, the samples are run in groups of equal length, each group for its own
    number of steps only, and the results put back in the batch order (zero-padded).
    """
    B, T = x.shape[:2]
    params = (weight, bias, weight_lambda, weight_gamma)
    lens = lengths_or_none(seq_lens, B, T)
    variant = (f_clamp, post_update_norm)
    if lens is None:
        return _fused_torch_full_length(
            (x, h, F, *params), recurrent, normalize, return_power, variant
        )
    outs, hs, Fs, powers, order = [], [], [], [], []
    for length in sorted(set(lens.tolist()), reverse=True):
        rows = (lens == length).nonzero().squeeze(1).to(x.device)
        order.append(rows)
        h_g, F_g = h.index_select(0, rows), F.index_select(0, rows)
        if length == 0:  # nothing to run: the state stays as it is
            hs.append(h_g)
            Fs.append(F_g)
            outs.append(x.new_zeros(len(rows), T, weight.shape[0]))
            powers.append(x.new_zeros(len(rows), T) if return_power else None)
            continue
        x_g = x.index_select(0, rows)[:, :length]
        o, h_g, F_g, p = _fused_torch_full_length(
            (x_g, h_g, F_g, *params), recurrent, normalize, return_power, variant
        )
        outs.append(torch.nn.functional.pad(o, (0, 0, 0, T - length)))
        powers.append(torch.nn.functional.pad(p, (0, T - length)) if return_power else None)
        hs.append(h_g)
        Fs.append(F_g)
    inverse = torch.empty(B, dtype=torch.int64, device=x.device)
    inverse[torch.cat(order)] = torch.arange(B, device=x.device)

    def gather(parts: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(parts).index_select(0, inverse)

    power = gather(powers) if return_power else None
    return gather(outs), gather(hs), gather(Fs), power


def stpn_sequence_fused(
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
    """Drop-in for `stpn_sequence_reference`: (out (B,T,H), h (B,H), F (B,H,D), power (B,T)).

    Runs the C++ kernel (`fused_cpp`) for CPU float32/float64 tensors when it builds, and the
    pure-torch op otherwise (CUDA, other dtypes, no compiler, or RLLIB_STPN_NO_CPP=1).
    """
    args = (x, h, F, weight, bias, weight_lambda, weight_gamma)
    impl = stpn_sequence_cpp if cpp_supports(*args) else stpn_sequence_fused_torch
    return impl(
        *args,
        recurrent=recurrent,
        normalize=normalize,
        return_power=return_power,
        seq_lens=seq_lens,
        f_clamp=f_clamp,
        post_update_norm=post_update_norm,
    )
