"""The "gru" core: torch.nn.GRU against the GRU equations written out step by step (outputs,
state, synaptic power and gradients), float64 gradcheck, equal-parameter sizing and learning.

The parametrised tests over every core (tests/test_rl_module.py, test_model_v2.py) cover its
RLModule state layout, step-by-step vs sequence, target networks and both API stacks.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rllib_stpn.model_config import core_hidden_size_for_params, count_core_parameters
from rllib_stpn.nn.cores import CORES, GRUCore, build_core

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def gru_reference(core: GRUCore, x: torch.Tensor, h: torch.Tensor):
    """Cho et al. 2014 as torch documents it, one step at a time, with P_t summed synapse by
    synapse over the 3H gate rows of W_ih (presynaptic x_t) and W_hh (presynaptic h_{t-1})."""
    g = core.gru
    w_ih, w_hh, b_ih, b_hh = g.weight_ih_l0, g.weight_hh_l0, g.bias_ih_l0, g.bias_hh_l0
    H = core.hidden_size
    outs, powers = [], []
    for t in range(x.shape[1]):
        xt = x[:, t]
        gi = xt @ w_ih.T + b_ih
        gh = h @ w_hh.T + b_hh
        r = torch.sigmoid(gi[:, :H] + gh[:, :H])
        z = torch.sigmoid(gi[:, H : 2 * H] + gh[:, H : 2 * H])
        n = torch.tanh(gi[:, 2 * H :] + r * gh[:, 2 * H :])
        power = (xt.unsqueeze(1) ** 2 * w_ih.abs().unsqueeze(0)).sum((1, 2))
        power = power + (h.unsqueeze(1) ** 2 * w_hh.abs().unsqueeze(0)).sum((1, 2))
        h = (1 - z) * n + z * h
        outs.append(h)
        powers.append(power)
    return torch.stack(outs, 1), h, torch.stack(powers, 1)


def test_registered_on_both_stacks_with_one_state_key():
    assert "gru" in CORES
    core = build_core("gru", 3, 5)
    assert isinstance(core, GRUCore) and core.state_shapes() == {"h": (5,)}
    assert core.compact_state_keys == ()


def test_matches_the_equations_outputs_state_power_and_gradients():
    torch.manual_seed(0)
    core = build_core("gru", 3, 5)
    x = torch.randn(4, 7, 3, requires_grad=True)
    h0 = (0.5 * torch.randn(4, 5)).requires_grad_()
    out, state, power = core(x, {"h": h0}, return_power=True)
    ref_out, ref_h, ref_power = gru_reference(core, x, h0)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(state["h"], ref_h)
    torch.testing.assert_close(power, ref_power)
    assert (power > 0).all()
    # Gradients of one loss through both, for the inputs, the state and every weight.
    w = torch.randn(4, 7, 5)
    leaves = [x, h0, *core.parameters()]

    def loss(o, h, p):
        return (o * w).sum() + h.pow(2).sum() + 0.01 * p.sum()

    got = torch.autograd.grad(loss(out, state["h"], power), leaves)
    expected = torch.autograd.grad(loss(ref_out, ref_h, ref_power), leaves)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)


def test_one_call_equals_steps_and_halves():
    torch.manual_seed(1)
    core = build_core("gru", 3, 4)
    x = torch.randn(2, 8, 3)
    with torch.no_grad():
        full, state, power = core(x, return_power=True)
        steps, s, powers = [], None, []
        for t in range(8):
            o, s, p = core(x[:, t : t + 1], s, return_power=True)
            steps.append(o)
            powers.append(p)
        a, sa, _ = core(x[:, :5])
        b, sb, _ = core(x[:, 5:], sa)
    torch.testing.assert_close(torch.cat(steps, 1), full)
    torch.testing.assert_close(torch.cat(powers, 1), power)
    torch.testing.assert_close(s["h"], state["h"])
    torch.testing.assert_close(torch.cat([a, b], 1), full)
    torch.testing.assert_close(sb["h"], state["h"])


def test_gradcheck_float64():
    torch.manual_seed(2)
    core = build_core("gru", 2, 3).double()
    x = torch.randn(2, 4, 2, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)

    def f(x, h0):
        out, state, power = core(x, {"h": h0}, return_power=True)
        return out, state["h"], power

    assert torch.autograd.gradcheck(f, (x, h0))


def test_count_follows_the_formula_and_sizing_round_trips():
    I, H = 7, 9
    assert count_core_parameters("gru", I, H) == 3 * H * (I + H) + 6 * H
    # Equal parameters: the GRU matching a 64-unit STPN on 2592 features sits between the
    # LSTM's 48 and the RNN's size, and every size maps back to itself.
    stpn = count_core_parameters("stpn", 2592, 64)
    gru = core_hidden_size_for_params(stpn, core="gru", input_size=2592)
    assert core_hidden_size_for_params(stpn, core="lstm", input_size=2592) == 48 < gru
    assert gru < core_hidden_size_for_params(stpn, core="rnn", input_size=2592)
    for h in (1, 16, 57):
        target = count_core_parameters("gru", I, h, num_outputs=3)
        assert core_hidden_size_for_params(target, core="gru", input_size=I, num_outputs=3) == h


def test_learns_to_recall_the_token_two_steps_back():
    """A short Adam run on the recall task of tests/test_plastic_cores.py: chance is ln 4."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    V, k = 4, 2
    core, head = build_core("gru", V, 16), torch.nn.Linear(16, V)
    opt = torch.optim.Adam([*core.parameters(), *head.parameters()], lr=1e-2)
    losses = []
    for _ in range(150):
        tokens = torch.randint(0, V, (32, 10), generator=g)
        out, _, _ = core(F.one_hot(tokens, V).float())
        loss = F.cross_entropy(head(out[:, k:]).reshape(-1, V), tokens[:, :-k].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert first > 0.85 * math.log(V) and last < 0.5 * math.log(V), (first, last)
