"""The fused STPN op (hand-written backward) against the plain autograd reference.

Every check runs twice: on the C++ kernel (`fused_cpp`, built once per session) and on the
pure-torch fallback (forced with RLLIB_STPN_NO_CPP=1).
"""

from __future__ import annotations

import concurrent.futures
import copy
import itertools
import logging
import time

import numpy as np
import pytest
import torch

from rllib_stpn import STPN, STPNState
from rllib_stpn.nn import fused, fused_cpp
from rllib_stpn.nn.functional import stpn_sequence_reference
from rllib_stpn.nn.fused import STPNSequenceFunction
from rllib_stpn.nn.fused_cpp import DISABLE_ENV, STPNSequenceCppFunction

MODES = list(itertools.product([True, False], ["per_synapse", "uniform"], [True, False]))


@pytest.fixture(params=["cpp", "torch"])
def backend(request, monkeypatch):
    """Which fused implementation STPN(implementation="fused") runs in this test."""
    if request.param == "cpp":
        monkeypatch.delenv(DISABLE_ENV, raising=False)
        fused_cpp.load()  # a build failure fails the test here instead of falling back
    else:
        monkeypatch.setenv(DISABLE_ENV, "1")
    assert fused_cpp.supports(torch.zeros(1)) == (request.param == "cpp")
    return request.param


def _pair(recurrent: bool, plasticity: str, normalize: bool, I: int, H: int, bias: bool = True):
    """The same layer twice: fused and reference, with plasticity strong enough to matter."""
    fused = STPN(I, H, recurrent=recurrent, plasticity=plasticity, normalize=normalize, bias=bias)
    with torch.no_grad():
        fused.weight_gamma.uniform_(-0.5, 0.5)
    ref = copy.deepcopy(fused)
    ref.implementation = "reference"
    return fused, ref


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|: relative to the tensor's scale, robust to entries near zero."""
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def _run(layer, x, state, weights, parts):
    out, st, power = layer(x, state, return_power=True)
    terms = {
        "out": (out * weights["out"]).sum(),
        "h": (st.h * weights["h"]).sum(),
        "F": (st.F * weights["F"]).sum(),
        "power": (power * weights["power"]).sum(),
    }
    loss = sum(terms[p] for p in parts)
    return loss, out, st, power


@pytest.mark.parametrize("with_state", [True, False])
@pytest.mark.parametrize("recurrent,plasticity,normalize", MODES)
def test_fused_matches_reference_float32(recurrent, plasticity, normalize, with_state, backend):
    torch.manual_seed(10)
    B, T, I, H = 3, 7, 5, 6
    fused, ref = _pair(recurrent, plasticity, normalize, I, H)
    D = fused.synapse_size
    x = torch.randn(B, T, I)
    h0, F0 = torch.randn(B, H) * 0.5, torch.randn(B, H, D) * 0.3
    weights = {
        "out": torch.randn(B, T, H),
        "h": torch.randn(B, H),
        "F": torch.randn(B, H, D),
        "power": torch.randn(B, T),
    }
    results = []
    for layer in (fused, ref):
        xs = x.clone().requires_grad_()
        state = None
        if with_state:
            state = STPNState(h0.clone().requires_grad_(), F0.clone().requires_grad_())
        loss, out, st, power = _run(layer, xs, state, weights, weights.keys())
        loss.backward()
        grads = {n: p.grad for n, p in layer.named_parameters()}
        grads["x"] = xs.grad
        if with_state:
            grads["h0"], grads["F0"] = state.h.grad, state.F.grad
        results.append(({"out": out, "h": st.h, "F": st.F, "power": power}, grads))
    (vals_f, grads_f), (vals_r, grads_r) = results
    for name in vals_r:
        assert _rel_err(vals_f[name].detach(), vals_r[name].detach()) < 1e-4, name
    assert grads_f.keys() == grads_r.keys()
    for name, g in grads_r.items():
        if name == "h0" and not recurrent:
            assert grads_f[name] is None or grads_f[name].abs().max() == 0
            continue
        assert g is not None and g.abs().max() > 0, name
        assert _rel_err(grads_f[name], g) < 1e-4, name


def test_deterministic_mode_gives_the_same_results(backend):
    """RLlib turns on torch's deterministic algorithms when a seed is set on a CPU-only torch;
    the op then allocates its buffers differently (the C++ one skips torch's NaN fill)."""
    torch.manual_seed(12)
    fused, _ = _pair(True, "per_synapse", True, 5, 6)
    x = torch.randn(3, 7, 5)
    weights = {
        "out": torch.randn(3, 7, 6),
        "h": torch.randn(3, 6),
        "F": torch.randn(3, 6, fused.synapse_size),
        "power": torch.randn(3, 7),
    }
    results = []
    for deterministic in (False, True):
        previous = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(deterministic)
        try:
            fused.zero_grad()
            loss, out, st, power = _run(fused, x, None, weights, weights.keys())
            loss.backward()
        finally:
            torch.use_deterministic_algorithms(previous)
        results.append([out, st.h, st.F, power] + [p.grad.clone() for p in fused.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("parts", [("out",), ("h",), ("F",), ("power",), ("out", "power")])
def test_partial_losses_match_reference(parts, backend):
    """Outputs without a gradient reach the backward as None: every such path must be right."""
    torch.manual_seed(11)
    B, T, I, H = 2, 5, 4, 3
    for recurrent, normalize in [(True, True), (False, False)]:
        fused, ref = _pair(recurrent, "per_synapse", normalize, I, H, bias=False)
        x = torch.randn(B, T, I)
        weights = {
            "out": torch.randn(B, T, H),
            "h": torch.randn(B, H),
            "F": torch.randn(B, H, fused.synapse_size),
            "power": torch.randn(B, T),
        }
        grads = []
        for layer in (fused, ref):
            xs = x.clone().requires_grad_()
            loss = _run(layer, xs, None, weights, parts)[0]
            loss.backward()
            grads.append([xs.grad] + [p.grad for p in layer.parameters()])
        for gf, gr in zip(*grads):
            assert _rel_err(gf, gr) < 1e-4


@pytest.mark.parametrize("backend", ["cpp", "torch"])
@pytest.mark.parametrize("recurrent,plasticity,normalize", MODES)
def test_gradcheck_fused_function_float64(recurrent, plasticity, normalize, backend):
    torch.manual_seed(12)
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

    def fn(*a):
        if backend == "cpp":
            return STPNSequenceCppFunction.apply(*a, None, recurrent, normalize, True)
        return STPNSequenceFunction.apply(*a, recurrent, normalize, True)

    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-6, rtol=1e-4)

    # Per-sample lengths (one sample stops after 1 of the 3 steps, one after 0): the op skips
    # the padding, and its gradients are still exact.
    lens = torch.tensor([1, 3, 0])
    args = (leaf(3, T, I), leaf(3, H, scale=0.5), leaf(3, H, D, scale=0.3), *args[3:])
    impl = fused_cpp.stpn_sequence_cpp if backend == "cpp" else fused.stpn_sequence_fused_torch

    def fn_lens(*a):
        out, h, F, power = impl(
            *a, recurrent=recurrent, normalize=normalize, return_power=True, seq_lens=lens
        )
        return out, h, F, power

    assert torch.autograd.gradcheck(fn_lens, args, eps=1e-6, atol=1e-6, rtol=1e-4)


def test_single_step_sampling_equals_sequence(backend):
    """The no-grad path, one step at a time with the state fed back, equals one training call."""
    torch.manual_seed(13)
    for recurrent, plasticity in [(True, "per_synapse"), (False, "uniform")]:
        layer = STPN(4, 5, recurrent=recurrent, plasticity=plasticity)
        with torch.no_grad():
            layer.weight_gamma.uniform_(-0.5, 0.5)
        x = torch.randn(3, 9, 4)
        out, state, power = layer(x.requires_grad_(), return_power=True)
        assert out.requires_grad
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


def test_no_grad_path_does_not_touch_the_given_state(backend):
    torch.manual_seed(14)
    layer = STPN(3, 4)
    state = STPNState(torch.randn(2, 4), torch.randn(2, 4, 7))
    before = STPNState(state.h.clone(), state.F.clone())
    with torch.no_grad():
        _, new = layer(torch.randn(2, 6, 3), state)
    assert torch.equal(state.h, before.h) and torch.equal(state.F, before.F)
    assert not torch.equal(new.F, before.F)


def test_backward_twice_with_retain_graph(backend):
    torch.manual_seed(15)
    layer = STPN(3, 4)
    x = torch.randn(2, 5, 3, requires_grad=True)
    out, _ = layer(x)
    out.sum().backward(retain_graph=True)
    first = x.grad.clone()
    out.sum().backward()
    torch.testing.assert_close(x.grad, 2 * first)


def test_bad_implementation():
    with pytest.raises(ValueError, match=r"implementation must be one of .*got 'triton'"):
        STPN(3, 4, implementation="triton")


@pytest.mark.parametrize("threads", [1, 3])
def test_cpp_neuron_blocks_and_thread_split(threads):
    """Long rows (neurons processed in blocks, the last one partial) and more threads than
    samples (a thread with no sample): still the reference, values and gradients."""
    fused_cpp.load()
    torch.manual_seed(16)
    B, T, I, H = 2, 3, 4000, 7
    D = I + H
    x = torch.randn(B, T, I)
    args = [
        torch.randn(B, H) * 0.5,
        torch.randn(B, H, D) * 0.02,
        torch.randn(H, D) * 0.02,
        torch.randn(H) * 0.3,
        torch.rand(H, D),
        torch.randn(H, D) * 0.5,
    ]
    w_out, w_F, w_P = torch.randn(B, T, H), torch.randn(B, H, D), torch.randn(B, T)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        results = []
        for fn in (fused_cpp.stpn_sequence_cpp, stpn_sequence_reference):
            xs = x.clone().requires_grad_()
            leaves = [a.clone().requires_grad_() for a in args]
            out, _, F, power = fn(xs, *leaves, recurrent=True, normalize=True, return_power=True)
            ((out * w_out).sum() + (F * w_F).sum() + (power * w_P).sum()).backward()
            results.append([out, F, power, xs.grad] + [a.grad for a in leaves])
    finally:
        torch.set_num_threads(previous)
    for got, want in zip(*results):
        assert _rel_err(got.detach(), want.detach()) < 1e-4


def test_dispatch_and_fallback(monkeypatch, caplog):
    """CPU float32 goes to the C++ kernel; the env switch selects pure torch silently, and a
    failed build falls back to pure torch with one WARNING (not an error), however often the
    layer runs."""
    layer = STPN(3, 4)
    x = torch.randn(2, 5, 3, requires_grad=True)
    calls = []
    for name in ("stpn_sequence_cpp", "stpn_sequence_fused_torch"):
        original = getattr(fused, name)

        def spy(*a, _name=name, _original=original, **k):
            calls.append(_name)
            return _original(*a, **k)

        monkeypatch.setattr(fused, name, spy)
    monkeypatch.delenv(DISABLE_ENV, raising=False)
    fused_cpp.load()
    expected, _ = layer(x)
    monkeypatch.setenv(DISABLE_ENV, "1")
    with caplog.at_level(logging.INFO, logger=fused_cpp.__name__):
        torch.testing.assert_close(layer(x)[0], expected)
    assert caplog.records == []
    monkeypatch.delenv(DISABLE_ENV)

    def broken():
        raise RuntimeError("no compiler")

    monkeypatch.setattr(fused_cpp, "_state", {"tried": False, "ops": None, "error": None})
    monkeypatch.setattr(fused_cpp, "_load_locked", broken)
    with caplog.at_level(logging.INFO, logger=fused_cpp.__name__):
        out, _ = layer(x)
        layer(x)
    out.sum().backward()
    torch.testing.assert_close(out, expected)
    assert fused_cpp.available() is False
    assert isinstance(fused_cpp._state["error"], RuntimeError)
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "no compiler" in warned[0].getMessage()
    assert calls == ["stpn_sequence_cpp"] + ["stpn_sequence_fused_torch"] * 3


def test_first_use_is_built_once_under_concurrency(monkeypatch):
    """Threads that reach the kernel first at the same time build it once, and none of them sees
    the kernel as unavailable while the build is under way."""
    builds = []
    real = fused_cpp._load_locked

    def slow_build():
        builds.append(1)
        time.sleep(0.2)  # a build takes seconds: the other threads arrive meanwhile
        return real()

    monkeypatch.setattr(fused_cpp, "_state", {"tried": False, "ops": None, "error": None})
    monkeypatch.setattr(fused_cpp, "_load_locked", slow_build)
    monkeypatch.delenv(DISABLE_ENV, raising=False)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: fused_cpp.available(), range(4)))
    assert answers == [True] * 4
    assert len(builds) == 1


def test_build_is_logged_at_info(monkeypatch, caplog):
    monkeypatch.setattr(fused_cpp, "_state", {"tried": False, "ops": None, "error": None})
    monkeypatch.delenv(DISABLE_ENV, raising=False)
    with caplog.at_level(logging.INFO, logger=fused_cpp.__name__):
        assert fused_cpp.available()
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any("ready" in m for m in messages), messages
    # The kernel source ships as a file of its own beside the loader.
    assert fused_cpp.SOURCE.name == "stpn_kernel.cpp" and fused_cpp.SOURCE.is_file()


@pytest.mark.parametrize("recurrent,plasticity,normalize", MODES)
def test_seq_lens_stop_each_sample_at_its_length(recurrent, plasticity, normalize, backend):
    """With per-sample lengths the fused op equals the masked reference (outputs, final states,
    power and every gradient), and each sample equals a run of its valid steps alone."""
    torch.manual_seed(17)
    B, T, I, H = 5, 7, 4, 6
    fused_layer, ref = _pair(recurrent, plasticity, normalize, I, H)
    fused_layer.double()
    ref.double()
    D = fused_layer.synapse_size
    x = torch.randn(B, T, I, dtype=torch.float64)
    state = STPNState(
        torch.randn(B, H, dtype=torch.float64) * 0.5, torch.randn(B, H, D, dtype=torch.float64)
    )
    lens = torch.tensor([7, 3, 0, 5, 1])
    w = [torch.randn(B, T, H), torch.randn(B, H), torch.randn(B, H, D), torch.randn(B, T)]
    results = []
    for layer in (fused_layer, ref):
        xs = x.clone().requires_grad_()
        out, st, power = layer(xs, state, return_power=True, seq_lens=lens)
        loss = sum((a * b.double()).sum() for a, b in zip((out, st.h, st.F, power), w))
        loss.backward()
        grads = [xs.grad] + [p.grad.clone() for p in layer.parameters()]
        layer.zero_grad()
        results.append([out, st.h, st.F, power, *grads])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-7)
    out, h_last, power = results[1][0], results[1][1], results[1][3]
    for b, length in enumerate(lens.tolist()):
        assert (out[b, length:] == 0).all() and (power[b, length:] == 0).all()
        if length == 0:
            torch.testing.assert_close(h_last[b], state.h[b])
            continue
        alone = STPNState(state.h[b : b + 1], state.F[b : b + 1])
        o, s = ref(x[b : b + 1, :length], alone)
        torch.testing.assert_close(out[b : b + 1, :length], o)
        torch.testing.assert_close(results[1][2][b], s.F[0])


def test_seq_lens_are_checked():
    layer = STPN(3, 4)
    with pytest.raises(ValueError, match=r"seq_lens must hold 2 lengths in \[0, 5\], got \[6, 1\]"):
        layer(torch.randn(2, 5, 3), seq_lens=torch.tensor([6, 1]))


@pytest.mark.parametrize("T", [1, 4])
def test_seq_lens_without_grad_match_training_path(T, backend):
    """The sampling path (no autograd, one or several steps) honours the lengths too."""
    torch.manual_seed(18)
    layer = STPN(4, 5)
    with torch.no_grad():
        layer.weight_gamma.uniform_(-0.5, 0.5)
    x = torch.randn(3, T, 4)
    state = STPNState(torch.randn(3, 5), torch.randn(3, 5, 9) * 0.3)
    lens = torch.tensor([T, 0, 1])
    expected = layer(x, state, return_power=True, seq_lens=lens)
    with torch.no_grad():
        got = layer(x, state, return_power=True, seq_lens=lens)
    for a, b in zip(
        (got[0], got[1].h, got[1].F, got[2]),
        (expected[0], expected[1].h, expected[1].F, expected[2]),
    ):
        torch.testing.assert_close(a, b.detach())
    torch.testing.assert_close(got[1].F[1], state.F[1])  # length 0: the state stays


def test_returned_states_are_never_overwritten(backend):
    """The C++ op reuses output buffers nothing refers to any more; states still held (by a
    caller, a numpy view, a slice) keep their values however many steps run after them."""
    torch.manual_seed(19)
    layer = STPN(6, 5)
    x = torch.randn(4, 1, 6)
    held, copies = [], []
    state = None
    with torch.no_grad():
        for step in range(8):
            _, state = layer(x, state)
            if step % 2 == 0:
                view = state.F.numpy()[1] if step % 4 == 0 else state.F[2:]
                held.append(view)
                copies.append(torch.as_tensor(np.array(view)).clone())
    for view, copy_ in zip(held, copies):
        torch.testing.assert_close(torch.as_tensor(np.asarray(view)), copy_)


def test_cpp_kernel_flushes_denormals_only_while_it_runs():
    """The kernel's threads flush denormal floats (inputs that only decay make them, and they are
    tens of times slower) and give the caller's floating-point mode back afterwards."""
    fused_cpp.load()
    torch.manual_seed(20)
    layer = STPN(6, 4)
    x = torch.randn(2, 5, 6)
    x[..., :3] = 0.0  # synapses of zero inputs only decay
    F = torch.full((2, 4, 10), 1e-39)  # denormal in float32
    F[..., 3:] = torch.randn(2, 4, 7)
    state = STPNState(torch.zeros(2, 4), F)
    out, st = layer(x, state)
    ref = copy.deepcopy(layer)
    ref.implementation = "reference"
    expected, _ = ref(x, state)
    torch.testing.assert_close(out, expected)
    assert (st.F.abs() < 1.2e-38).sum() == (st.F == 0).sum()  # no denormal left in the output
    tiny = torch.tensor([1e-39]) * torch.tensor([1.0])
    assert tiny.item() != 0.0  # the caller's mode: denormals still exist here


@pytest.mark.parametrize("every", [1, 2, 3, 4, 6, 7, 40])
@pytest.mark.parametrize("variant", [(None, False), (0.1, True)])
def test_cpp_checkpointed_states_give_the_reference(every, variant, monkeypatch):
    """The training forward keeps every k-th state and the backward recomputes the others: for
    any k (segments of every length, k beyond T, per-sample lengths that end inside a segment,
    the authors' clamp and post-update normalisation, two threads) values and gradients are the
    reference's."""
    fused_cpp.load()
    monkeypatch.setattr(fused_cpp, "CHECKPOINT_EVERY", every)
    torch.manual_seed(17)
    B, T, I, H = 5, 9, 4, 6
    f_clamp, post = variant
    layer = STPN(I, H, f_clamp=f_clamp, post_update_norm=post)
    with torch.no_grad():
        layer.weight_gamma.uniform_(-0.5, 0.5)
    ref = copy.deepcopy(layer)
    ref.implementation = "reference"
    D = layer.synapse_size
    x, lens = torch.randn(B, T, I), torch.tensor([9, 8, 3, 0, 5])
    h0, F0 = torch.randn(B, H) * 0.5, torch.randn(B, H, D) * 0.3
    w = [torch.randn(B, T, H), torch.randn(B, H), torch.randn(B, H, D), torch.randn(B, T)]
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        results = []
        for lay in (layer, ref):
            xs = x.clone().requires_grad_()
            st = STPNState(h0.clone().requires_grad_(), F0.clone().requires_grad_())
            out, new, power = lay(xs, st, return_power=True, seq_lens=lens)
            vals = [out, new.h, new.F, power]
            sum((v * wi).sum() for v, wi in zip(vals, w)).backward()
            grads = [xs.grad, st.h.grad, st.F.grad] + [p.grad for p in lay.parameters()]
            results.append([v.detach() for v in vals] + grads)
    finally:
        torch.set_num_threads(previous)
    for got, want in zip(*results):
        assert want.abs().max() > 0
        assert _rel_err(got, want) < 1e-4


def test_cpp_training_forward_keeps_only_the_checkpoints(monkeypatch):
    """Within the budget every state is kept; beyond it k = round(sqrt(T - 1)) checkpoint slabs
    plus max(k - 1, 2) scratch slabs, not T - 1."""
    fused_cpp.load()
    B, T, I, H = 2, 50, 3, 4
    layer = STPN(I, H)
    x = torch.randn(B, T, I, requires_grad=True)
    state_bytes = B * H * layer.synapse_size * 4
    for budget, k in ((T * state_bytes, 1), (state_bytes, 7)):
        monkeypatch.setattr(fused_cpp, "SAVED_STATES_BUDGET", budget)
        assert fused_cpp.checkpoint_every(T, state_bytes) == k
        out, _, _ = layer(x, return_power=True)
        saved = [t for t in out.grad_fn.saved_tensors if t is not None and t.dim() == 4]
        slabs = T - 1 if k == 1 else (T - 1) // k + (k - 1)
        assert [tuple(t.shape) for t in saved] == [(slabs, B, H, layer.synapse_size)]
