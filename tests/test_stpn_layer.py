"""The STPN layer against SPEC section 1, written out step by step with plain loops."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from rllib_stpn import STPN, STPNState

CONFIGS = list(itertools.product([True, False], ["per_synapse", "uniform"], [True, False]))


def spec_reference(layer: STPN, x: torch.Tensor, h: torch.Tensor, F: torch.Tensor):
    """SPEC section 1 one sample, one neuron, one synapse at a time (float64, no vectorisation),
    with the authors' variants as docs/fidelity.md writes them (clamp, then post-normalisation)."""
    B, T, _ = x.shape
    H, D = layer.hidden_size, layer.synapse_size
    W = layer.weight.detach().double()
    b = layer.bias.detach().double() if layer.bias is not None else torch.zeros(H).double()
    lam = layer.weight_lambda.detach().double().expand(H, D)
    gam = layer.weight_gamma.detach().double().expand(H, D)
    x, h, F = x.double(), h.double().clone(), F.double().clone()
    out = torch.zeros(B, T, H, dtype=torch.float64)
    power = torch.zeros(B, T, dtype=torch.float64)
    for s in range(B):
        for t in range(T):
            z = torch.cat([x[s, t], h[s]]) if layer.recurrent else x[s, t]
            new_h = torch.zeros(H, dtype=torch.float64)
            new_F = torch.zeros(H, D, dtype=torch.float64)
            for i in range(H):
                G = W[i] + F[s, i]
                n = math.sqrt(float((G * G).sum())) + 1e-12 if layer.normalize else 1.0
                G_hat, F_hat = G / n, F[s, i] / n
                new_h[i] = math.tanh(float((G_hat * z).sum()) + float(b[i]))
                power[s, t] += float((z * z * G_hat.abs()).sum())
                new_F[i] = lam[i] * (F[s, i] if layer.post_update_norm else F_hat)
            for i in range(H):
                new_F[i] = new_F[i] + gam[i] * new_h[i] * z
                if layer.f_clamp is not None:
                    c = layer.f_clamp
                    clamped = [min(max(float(v), -c), c) for v in new_F[i]]
                    new_F[i] = torch.tensor(clamped, dtype=torch.float64)
                if layer.post_update_norm:
                    m = math.sqrt(float(((W[i] + new_F[i]) ** 2).sum())) + 1e-12
                    new_F[i] = new_F[i] / m
            h[s], F[s] = new_h, new_F
            out[s, t] = new_h
    return out, h, F, power


@pytest.mark.parametrize("recurrent,plasticity,normalize", CONFIGS)
def test_matches_spec_reference(recurrent, plasticity, normalize):
    torch.manual_seed(0)
    layer = STPN(3, 4, recurrent=recurrent, plasticity=plasticity, normalize=normalize)
    # Stronger plasticity than the init so that F matters within a few steps.
    with torch.no_grad():
        layer.weight_gamma.uniform_(-0.5, 0.5)
    x = torch.randn(2, 5, 3)
    h0 = torch.randn(2, 4) * 0.5
    F0 = torch.randn(2, 4, layer.synapse_size) * 0.1
    out, state, power = layer(x, STPNState(h0, F0), return_power=True)
    ref_out, ref_h, ref_F, ref_power = spec_reference(layer, x, h0, F0)
    torch.testing.assert_close(out.double(), ref_out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(state.h.double(), ref_h, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(state.F.double(), ref_F, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(power.double(), ref_power, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "f_clamp,post_update_norm", [(0.05, False), (None, True), (0.05, True), (2, True)]
)
@pytest.mark.parametrize("recurrent,plasticity,normalize", CONFIGS)
def test_variants_match_spec_reference(recurrent, plasticity, normalize, f_clamp, post_update_norm):
    torch.manual_seed(0)
    layer = STPN(
        3,
        4,
        recurrent=recurrent,
        plasticity=plasticity,
        normalize=normalize,
        f_clamp=f_clamp,
        post_update_norm=post_update_norm,
    ).double()  # float64 throughout: the loop below is the exact statement
    with torch.no_grad():
        layer.weight_gamma.uniform_(-0.5, 0.5)
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    h0 = torch.randn(2, 4, dtype=torch.float64) * 0.5
    F0 = torch.randn(2, 4, layer.synapse_size, dtype=torch.float64) * 0.1
    ref_out, ref_h, ref_F, ref_power = spec_reference(layer, x, h0, F0)
    for implementation in ("fused", "reference"):
        layer.implementation = implementation
        out, state, power = layer(x, STPNState(h0, F0), return_power=True)
        for got, want in zip((out, state.h, state.F, power), (ref_out, ref_h, ref_F, ref_power)):
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)
    if f_clamp is not None and not post_update_norm and f_clamp < 1:
        assert state.F.abs().max() <= f_clamp and (state.F.abs() == f_clamp).any()


def test_shapes_parameters_and_init():
    layer = STPN(5, 7)
    assert layer.synapse_size == 12
    assert layer.weight.shape == (7, 12) and layer.bias.shape == (7,)
    assert layer.weight_lambda.shape == (7, 12) and layer.weight_gamma.shape == (7, 12)
    bound = 1 / math.sqrt(7)
    assert layer.weight.abs().max() <= bound and layer.bias.abs().max() <= bound
    assert 0 <= layer.weight_lambda.min() and layer.weight_lambda.max() <= 1
    assert layer.weight_gamma.abs().max() <= 0.001 * bound
    f = STPN(5, 7, recurrent=False, plasticity="uniform", bias=False)
    assert f.synapse_size == 5 and f.bias is None
    assert f.weight_lambda.shape == () and f.weight_gamma.shape == ()
    out, state = layer(torch.randn(3, 4, 5))
    assert out.shape == (3, 4, 7)
    assert isinstance(state, STPNState)
    assert state.h.shape == (3, 7) and state.F.shape == (3, 7, 12)
    torch.testing.assert_close(out[:, -1], state.h)


@pytest.mark.parametrize("recurrent", [True, False])
def test_weight_init_by_input_size(recurrent):
    """weight_init="input": the authors' STPNf bounds, 1/√I in place of 1/√H (Scripts/STPLayers.py
    init_weights with k_for_weight_init = 1 / in_features)."""
    torch.manual_seed(7)
    I, H = 4, 400  # 1/√I = 0.5, 1/√H = 0.05: the bounds are far apart
    layer = STPN(I, H, recurrent=recurrent, weight_init="input")
    bound = 1 / math.sqrt(I)
    for p, scale in ((layer.weight, 1.0), (layer.bias, 1.0), (layer.weight_gamma, 0.001)):
        assert p.abs().max() <= scale * bound
        assert p.abs().max() > 0.9 * scale * bound  # the draws fill the range
    assert 0 <= layer.weight_lambda.min() and layer.weight_lambda.max() <= 1
    assert layer.weight_lambda.max() > 0.9 and layer.weight_lambda.min() < 0.1
    paper = STPN(I, H, recurrent=recurrent)
    assert paper.weight.abs().max() <= 1 / math.sqrt(H)
    assert "weight_init='input'" in repr(layer) and "weight_init" not in repr(paper)


@pytest.mark.parametrize("recurrent", [True, False])
def test_two_halves_equal_one_call(recurrent):
    torch.manual_seed(1)
    layer = STPN(4, 6, recurrent=recurrent)
    with torch.no_grad():
        layer.weight_gamma.uniform_(-0.3, 0.3)
    x = torch.randn(3, 10, 4)
    out, state, power = layer(x, return_power=True)
    out1, s1, p1 = layer(x[:, :4], return_power=True)
    out2, s2, p2 = layer(x[:, 4:], s1, return_power=True)
    torch.testing.assert_close(torch.cat([out1, out2], 1), out)
    torch.testing.assert_close(torch.cat([p1, p2], 1), power)
    torch.testing.assert_close(s2.h, state.h)
    torch.testing.assert_close(s2.F, state.F)


def test_batch_samples_are_independent():
    torch.manual_seed(2)
    layer = STPN(3, 4)
    x = torch.randn(4, 6, 3)
    out, _ = layer(x)
    out_one, _ = layer(x[2:3])
    torch.testing.assert_close(out[2:3], out_one)


@pytest.mark.parametrize("recurrent,plasticity,normalize", CONFIGS)
def test_gradcheck_float64(recurrent, plasticity, normalize):
    torch.manual_seed(3)
    layer = STPN(2, 3, recurrent=recurrent, plasticity=plasticity, normalize=normalize).double()
    with torch.no_grad():
        layer.weight_gamma.uniform_(-0.5, 0.5)
    x = torch.randn(2, 4, 2, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    F0 = (0.1 * torch.randn(2, 3, layer.synapse_size, dtype=torch.float64)).requires_grad_()
    params = [layer.weight, layer.bias, layer.weight_lambda, layer.weight_gamma]

    def fn(x, h0, F0, W, b, lam, gam):
        with torch.nn.utils.stateless._reparametrize_module(
            layer, {"weight": W, "bias": b, "weight_lambda": lam, "weight_gamma": gam}
        ):
            out, state, power = layer(x, STPNState(h0, F0), return_power=True)
        return out, state.h, state.F, power

    assert torch.autograd.gradcheck(fn, (x, h0, F0, *params), eps=1e-6, atol=1e-5)


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(4)
    layer = STPN(3, 4)
    out, state, power = layer(torch.randn(2, 5, 3), return_power=True)
    (out.sum() + power.sum()).backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_long_large_input_stays_finite():
    torch.manual_seed(5)
    layer = STPN(8, 16)
    with torch.no_grad():
        layer.weight_lambda.fill_(1.0)  # no decay: only the normalisation bounds F
        layer.weight_gamma.uniform_(0.5, 1.0)
    state = None
    with torch.no_grad():
        for _ in range(100):
            x = 100.0 * torch.randn(4, 100, 8)
            out, state, power = layer(x, state, return_power=True)
            assert torch.isfinite(out).all() and torch.isfinite(power).all()
    assert torch.isfinite(state.F).all() and torch.isfinite(state.h).all()


def test_float64_and_module_dtype():
    layer = STPN(3, 4).double()
    out, state = layer(torch.randn(2, 3, 3, dtype=torch.float64))
    assert out.dtype == torch.float64 and state.F.dtype == torch.float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    torch.manual_seed(6)
    layer = STPN(3, 4)
    x = torch.randn(2, 5, 3)
    out, state, power = layer(x, return_power=True)
    out_c, state_c, power_c = layer.cuda()(x.cuda(), return_power=True)
    torch.testing.assert_close(out_c.cpu(), out)
    torch.testing.assert_close(power_c.cpu(), power)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(input_size=0, hidden_size=4), "input_size must be a positive int, got 0"),
        (dict(input_size=3, hidden_size=-2), "hidden_size must be a positive int, got -2"),
        (dict(input_size=3, hidden_size=2.5), "hidden_size must be a positive int, got 2.5"),
        (dict(input_size=3, hidden_size=4, plasticity="global"), "plasticity must be one of"),
        (dict(input_size=3, hidden_size=4, f_clamp=0), "f_clamp must be None or a positive"),
        (dict(input_size=3, hidden_size=4, f_clamp=-1.0), r"finite number, got -1\.0$"),
        (dict(input_size=3, hidden_size=4, f_clamp=float("inf")), "positive finite number"),
        (dict(input_size=3, hidden_size=4, f_clamp="0.1"), r"positive number, got '0\.1'$"),
        (dict(input_size=3, hidden_size=4, f_clamp=True), "positive number, got True"),
        (
            dict(input_size=3, hidden_size=4, post_update_norm="yes"),
            "post_update_norm must be True or False, got 'yes'",
        ),
        (
            dict(input_size=3, hidden_size=4, weight_init="kaiming"),
            r"weight_init must be one of \('paper', 'input'\), got 'kaiming'",
        ),
    ],
)
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match) as info:
        STPN(**kwargs)
    assert "\n" not in str(info.value)


def test_bad_inputs():
    layer = STPN(3, 4)
    with pytest.raises(ValueError, match=r"x must have shape \(batch, time, 3\), got \(5, 3\)"):
        layer(torch.randn(5, 3))
    with pytest.raises(ValueError, match="x has 2 features .* expected input_size=3"):
        layer(torch.randn(2, 5, 2))
    with pytest.raises(ValueError, match="0 time steps"):
        layer(torch.randn(2, 0, 3))
    good = layer.initial_state(2)
    with pytest.raises(ValueError, match=r"state.h has shape \(3, 4\), expected \(2, 4\)"):
        layer(torch.randn(2, 5, 3), STPNState(torch.zeros(3, 4), good.F))
    with pytest.raises(ValueError, match=r"state.F has shape \(2, 4, 3\), expected \(2, 4, 7\)"):
        layer(torch.randn(2, 5, 3), STPNState(good.h, torch.zeros(2, 4, 3)))
    with pytest.raises(ValueError, match="state must be STPNState"):
        layer(torch.randn(2, 5, 3), good.h)


def test_dtype_or_device_other_than_the_parameters_is_one_clear_error():
    layer = STPN(3, 4)  # float32 on the CPU
    x, good = torch.randn(2, 5, 3), layer.initial_state(2)
    cases = [
        ((x.double(), None), r"^x has dtype torch.float64 on device cpu, expected torch.float32"),
        ((x.long(), None), r"^x has dtype torch.int64 on device cpu, expected torch.float32"),
        ((x, STPNState(good.h.double(), good.F)), r"^state.h has dtype torch.float64 on device"),
        # "meta" is a real device other than the parameters' one, available without a GPU.
        (
            (x, STPNState(good.h, good.F.to("meta"))),
            r"^state.F has dtype torch.float32 on "
            r"device meta, expected torch.float32 on cpu",
        ),
        ((x.to("meta"), None), r"^x has dtype torch.float32 on device meta, expected"),
    ]
    for args, match in cases:
        with pytest.raises(ValueError, match=match) as info:
            layer(*args)
        assert "\n" not in str(info.value)
    # A float64 layer wants float64 inputs and states, and names them as expected.
    layer64 = STPN(3, 4).double()
    with pytest.raises(ValueError, match="x has dtype torch.float32 .* expected torch.float64"):
        layer64(x)
    with pytest.raises(ValueError, match="state.F has dtype torch.float32 .* expected .*float64"):
        layer64(x.double(), STPNState(good.h.double(), good.F))
    with pytest.raises(ValueError, match="state.h must be a tensor, got list"):
        layer(x, STPNState([0.0], good.F))
