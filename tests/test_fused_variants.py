"""The authors' STPN variants (f_clamp, post_update_norm) in the fused ops against the reference.

Same checks as tests/test_fused.py, for each variant: the C++ kernel and the pure-torch op give
the reference's values and gradients (float32 and gradcheck in float64), with per-sample
lengths, and one step at a time on the sampling path.
"""

from __future__ import annotations

import copy
import itertools

import pytest
import torch

from rllib_stpn import STPN, STPNState
from rllib_stpn.nn import fused, fused_cpp
from rllib_stpn.nn.fused import STPNSequenceFunction
from rllib_stpn.nn.fused_cpp import DISABLE_ENV, STPNSequenceCppFunction

# (f_clamp, post_update_norm): the InvertedPendulum clamp alone, the post-update normalisation
# alone, and both (the maze's STPN).
VARIANTS = [(0.1, False), (None, True), (0.1, True)]
MODES = list(itertools.product([True, False], ["per_synapse", "uniform"], [True, False]))
# Each of recurrent, plasticity and normalize both ways, for the slower float64 gradchecks.
GRADCHECK_MODES = [
    (True, "per_synapse", True),
    (True, "uniform", False),
    (False, "per_synapse", False),
    (False, "uniform", True),
]


@pytest.fixture(params=["cpp", "torch"])
def backend(request, monkeypatch):
    """Which fused implementation STPN(implementation="fused") runs in this test."""
    if request.param == "cpp":
        monkeypatch.delenv(DISABLE_ENV, raising=False)
        fused_cpp.load()  # a build failure fails the test here instead of falling back
    else:
        monkeypatch.setenv(DISABLE_ENV, "1")
    return request.param


def _pair(recurrent, plasticity, normalize, f_clamp, post_update_norm, I, H, dtype=torch.float32):
    """Fused and reference layers with plasticity strong enough for the clamp to bite."""
    layer = STPN(
        I,
        H,
        recurrent=recurrent,
        plasticity=plasticity,
        normalize=normalize,
        f_clamp=f_clamp,
        post_update_norm=post_update_norm,
    ).to(dtype)
    with torch.no_grad():
        layer.weight_gamma.uniform_(-0.5, 0.5)
    ref = copy.deepcopy(layer)
    ref.implementation = "reference"
    return layer, ref


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|: relative to the tensor's scale, robust to entries near zero."""
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def _run_both(layers, x, state, weights, seq_lens=None):
    """Values and gradients (x, h0, F0, parameters) of a weighted loss over every output."""
    results = []
    for layer in layers:
        xs = x.clone().requires_grad_()
        st = STPNState(state.h.clone().requires_grad_(), state.F.clone().requires_grad_())
        out, new, power = layer(xs, st, return_power=True, seq_lens=seq_lens)
        values = [out, new.h, new.F, power]
        sum((v * w.to(v.dtype)).sum() for v, w in zip(values, weights)).backward()
        grads = [xs.grad, st.h.grad, st.F.grad] + [p.grad for p in layer.parameters()]
        results.append(([v.detach() for v in values], grads))
    return results


@pytest.mark.parametrize("f_clamp,post_update_norm", VARIANTS)
@pytest.mark.parametrize("recurrent,plasticity,normalize", MODES)
def test_variants_match_reference_float32(
    recurrent, plasticity, normalize, f_clamp, post_update_norm, backend
):
    torch.manual_seed(30)
    B, T, I, H = 3, 7, 5, 6
    layer, ref = _pair(recurrent, plasticity, normalize, f_clamp, post_update_norm, I, H)
    D = layer.synapse_size
    x = torch.randn(B, T, I)
    state = STPNState(torch.randn(B, H) * 0.5, torch.randn(B, H, D) * 0.3)
    weights = [torch.randn(B, T, H), torch.randn(B, H), torch.randn(B, H, D), torch.randn(B, T)]
    (vals_f, grads_f), (vals_r, grads_r) = _run_both((layer, ref), x, state, weights)
    for got, want in zip(vals_f, vals_r):
        assert _rel_err(got, want) < 1e-4
    for got, want in zip(grads_f, grads_r):
        if want is None:  # dL/dh0 of an STPNf: h0 is not an input of any step
            assert got is None or got.abs().max() == 0
            continue
        assert want.abs().max() > 0
        assert _rel_err(got, want) < 1e-4
    if f_clamp is not None and not post_update_norm:
        # The clamp is active: the final F holds entries at ±c, and none beyond.
        assert vals_r[2].abs().max() <= f_clamp
        assert (vals_r[2].abs() == f_clamp).any()


@pytest.mark.parametrize("backend", ["cpp", "torch"])
@pytest.mark.parametrize("f_clamp,post_update_norm", VARIANTS)
@pytest.mark.parametrize("recurrent,plasticity,normalize", GRADCHECK_MODES)
def test_variants_gradcheck_float64(
    recurrent, plasticity, normalize, f_clamp, post_update_norm, backend
):
    torch.manual_seed(31)
    B, T, I, H = 2, 3, 2, 3
    D = I + H if recurrent else I
    stp = (H, D) if plasticity == "per_synapse" else ()

    def leaf(*shape, scale=1.0):
        return (scale * torch.randn(shape, dtype=torch.float64)).requires_grad_()

    args = (
        leaf(B, T, I),
        leaf(B, H, scale=0.5),
        leaf(B, H, D, scale=0.3),
        leaf(H, D, scale=0.5),
        leaf(H, scale=0.3),
        torch.rand(stp, dtype=torch.float64).requires_grad_(),
        leaf(*stp, scale=0.5),
    )
    variant = (f_clamp, post_update_norm)

    def fn(*a):
        if backend == "cpp":
            return STPNSequenceCppFunction.apply(*a, None, recurrent, normalize, True, *variant)
        return STPNSequenceFunction.apply(*a, recurrent, normalize, True, *variant)

    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-6, rtol=1e-4)

    lens = torch.tensor([1, 3, 0])
    args = (leaf(3, T, I), leaf(3, H, scale=0.5), leaf(3, H, D, scale=0.3), *args[3:])
    impl = fused_cpp.stpn_sequence_cpp if backend == "cpp" else fused.stpn_sequence_fused_torch

    def fn_lens(*a):
        return impl(
            *a,
            recurrent=recurrent,
            normalize=normalize,
            return_power=True,
            seq_lens=lens,
            f_clamp=f_clamp,
            post_update_norm=post_update_norm,
        )

    assert torch.autograd.gradcheck(fn_lens, args, eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("f_clamp,post_update_norm", VARIANTS)
@pytest.mark.parametrize("recurrent,plasticity", [(True, "per_synapse"), (False, "uniform")])
def test_variants_with_seq_lens_match_reference(
    recurrent, plasticity, f_clamp, post_update_norm, backend
):
    """Padded samples: the fused op equals the masked reference (values and gradients)."""
    torch.manual_seed(32)
    B, T, I, H = 5, 7, 4, 6
    layer, ref = _pair(
        recurrent, plasticity, True, f_clamp, post_update_norm, I, H, dtype=torch.float64
    )
    D = layer.synapse_size
    x = torch.randn(B, T, I, dtype=torch.float64)
    state = STPNState(
        torch.randn(B, H, dtype=torch.float64) * 0.5,
        torch.randn(B, H, D, dtype=torch.float64) * 0.3,
    )
    lens = torch.tensor([7, 3, 0, 5, 1])
    weights = [torch.randn(B, T, H), torch.randn(B, H), torch.randn(B, H, D), torch.randn(B, T)]
    (vals_f, grads_f), (vals_r, grads_r) = _run_both((layer, ref), x, state, weights, lens)
    for got, want in zip(vals_f + grads_f, vals_r + grads_r):
        if want is None:
            continue
        torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-7)
    out, power = vals_r[0], vals_r[3]
    for b, length in enumerate(lens.tolist()):
        assert (out[b, length:] == 0).all() and (power[b, length:] == 0).all()
    torch.testing.assert_close(vals_r[2][2], state.F[2])  # length 0: the state stays


@pytest.mark.parametrize("f_clamp,post_update_norm", VARIANTS)
def test_variants_single_step_sampling_equals_sequence(f_clamp, post_update_norm, backend):
    """The no-grad path, one step at a time with the state fed back, equals one training call;
    with lengths too (the sampling path's padded steps leave the state as it is)."""
    torch.manual_seed(33)
    for recurrent, plasticity in [(True, "per_synapse"), (False, "uniform")]:
        layer, ref = _pair(recurrent, plasticity, True, f_clamp, post_update_norm, 4, 5)
        x = torch.randn(3, 9, 4)
        out, state, power = layer(x.requires_grad_(), return_power=True)
        ref_out, ref_state, _ = ref(x, return_power=True)
        assert _rel_err(out, ref_out) < 1e-4
        step_state, outs, powers = None, [], []
        with torch.no_grad():
            for t in range(x.shape[1]):
                o, step_state, p = layer(x[:, t : t + 1], step_state, return_power=True)
                outs.append(o)
                powers.append(p)
        torch.testing.assert_close(torch.cat(outs, 1), out.detach())
        torch.testing.assert_close(torch.cat(powers, 1), power.detach())
        torch.testing.assert_close(step_state.h, state.h.detach())
        torch.testing.assert_close(step_state.F, state.F.detach())
        assert _rel_err(step_state.F, ref_state.F) < 1e-4
        with torch.no_grad():
            lens = torch.tensor([1, 0, 1])
            o, s, p = layer(x[:, :1], step_state, return_power=True, seq_lens=lens)
            e = ref(x[:, :1], step_state, return_power=True, seq_lens=lens)
        for got, want in zip((o, s.h, s.F, p), (e[0], e[1].h, e[1].F, e[2])):
            assert _rel_err(got, want) < 1e-4
        torch.testing.assert_close(s.F[1], step_state.F[1])
