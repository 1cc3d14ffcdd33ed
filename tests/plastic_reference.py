"""The comparison cores' source equations written out one sample and one step at a time (float64).

Each function follows its source as docs/fidelity.md lists it (Scripts/STPLayers.py of
NeuromorphicComputing/stpn; models/model.py and models/plastic/meta.py of PlasticRNNs), not
`rllib_stpn.nn.plastic`: no shared helpers, separate i_fc and h_fc as in the source, python
branches for the clips, and the gradient rule differentiated by autograd with respect to the
plastic parts themselves. The tests compare the layers and cores against these.
"""

from __future__ import annotations

import math

import torch

from rllib_stpn.nn.plastic import FastWeightsRNN, HebbFF, ModPlastRNN, PlasticRNN


def _d(t: torch.Tensor) -> torch.Tensor:
    return t.detach().double()


def _power(z: torch.Tensor, G: torch.Tensor) -> float:
    """sum_i sum_j z[j]^2 |G[i, j]|, one synapse at a time."""
    total = 0.0
    for i in range(G.shape[0]):
        for j in range(G.shape[1]):
            total += float(z[j]) ** 2 * abs(float(G[i, j]))
    return total


def _fastweights(layer: FastWeightsRNN, x, h, A):
    Wx, Wh, b = _d(layer.weight_ih), _d(layer.weight_hh), _d(layer.bias)
    g, beta = _d(layer.ln_weight), _d(layer.ln_bias)

    def ln(a):
        mean = a.mean()
        var = ((a - mean) ** 2).mean()
        return g * (a - mean) / math.sqrt(float(var) + layer.ln_eps) + beta

    A = torch.outer(h, h) * layer.fast_lr + layer.decay * A
    s = Wx @ x + Wh @ h + b
    h0 = torch.tanh(ln(s))
    new_h = torch.tanh(ln(s + A @ h0))
    power = _power(x, Wx) + _power(h, Wh) + _power(h0, A)
    return new_h, (new_h, A), power


def _modplast(layer: ModPlastRNN, x, h, hebb):
    W_in, b, W, alpha = _d(layer.weight_ih), _d(layer.bias), _d(layer.weight_hh), _d(layer.alpha)
    G = W + alpha * hebb
    new_h = torch.tanh(W_in @ x + G @ h + b)
    M = math.tanh(float(_d(layer.mod_weight) @ new_h) + float(_d(layer.mod_bias)))
    new_hebb = hebb.clone()
    for i in range(hebb.shape[0]):
        for j in range(hebb.shape[1]):
            new_hebb[i, j] = min(1.0, max(-1.0, float(hebb[i, j]) + M * new_h[i] * h[j]))
    return new_h, (new_h, new_hebb), _power(x, W_in) + _power(h, G)


def _hebbff(layer: HebbFF, x, A):
    G = _d(layer.weight) + A
    h = torch.sigmoid(G @ x + _d(layer.bias))
    lam = 1.0 / (1.0 + math.exp(-float(_d(layer.retention_logit))))
    eta = -math.exp(float(_d(layer.log_neg_eta)))  # forced anti-Hebbian
    new_A = lam * A + eta * torch.outer(h, x)
    return h, (new_A,), _power(x, G)


def _plastic(layer: PlasticRNN, x, h, P):
    H = layer.hidden_size
    names = ("in_weight", "in_bias", "rec_weight", "rec_bias", "out_weight", "out_bias")
    slow = {n: _d(getattr(layer, n)) for n in names}
    plastic, i = {}, 0  # the source's floatparams, unpacked from the flat state
    for n, shape in layer.plastic_shapes().items():
        size = math.prod(shape)
        plastic[n] = P[i : i + size].reshape(shape)
        i += size

    def run(plastic):
        W = {n: slow[n] + plastic[n] if n in plastic else slow[n] for n in names}
        u = torch.relu(W["in_weight"] @ x + W["in_bias"])  # in_fc, ReLU
        i_fc = W["rec_weight"][:, :H] @ u + W["rec_bias"][0]
        h_fc = W["rec_weight"][:, H:] @ h + W["rec_bias"][1]
        new_h = torch.relu(i_fc + h_fc)  # PlasticRNNCell
        y = W["out_weight"] @ new_h + W["out_bias"]  # out_fc, no activation
        return W, u, new_h, y

    W, u, new_h, y = run(plastic)
    if layer.rule == "hebbian":  # pre x post of each plastic weight, as (post, pre)
        delta = {
            "in_weight": torch.outer(u, x),
            "rec_weight": torch.outer(new_h, torch.cat([u, h])),
            "out_weight": torch.outer(y, new_h),
        }
    else:  # ∂/∂floatparam of mse(out_weight * y, 0) for this one sample
        leaves = {n: v.clone().requires_grad_(True) for n, v in plastic.items()}
        with torch.enable_grad():
            y_leaf = run(leaves)[3]
            loss = ((_d(layer.loss_weight) * y_leaf) ** 2).mean()
            grads = torch.autograd.grad(loss, list(leaves.values()))
        delta = dict(zip(leaves, grads))
    norm = math.sqrt(sum(float((d * d).sum()) for d in delta.values()))
    m = 1.0 / (1.0 + math.exp(-float(y[-1])))  # the modulatory (last) output unit
    lr, wd = layer.plastic_lr * 2 * m, layer.plastic_decay * 2 * m
    if norm > layer.clip:  # the source shrinks the rate so that lr * norm = lr * clip
        lr = lr * layer.clip / norm
    new = [
        (1 - wd) * plastic[n] + lr * delta[n] * _d(layer.rate[n]) for n in layer.plastic_shapes()
    ]
    new_P = torch.cat([v.reshape(-1) for v in new])
    power = (
        _power(x, W["in_weight"])
        + _power(u, W["rec_weight"][:, :H])
        + _power(h, W["rec_weight"][:, H:])
    )
    return y[:H], (new_h, new_P), power


STEPS = {
    FastWeightsRNN: _fastweights,
    ModPlastRNN: _modplast,
    HebbFF: _hebbff,
    PlasticRNN: _plastic,
}


def reference(layer, x: torch.Tensor, state: tuple):
    """(out (B, T, H), final state tuple, power (B, T)) of `layer`, all float64."""
    step = STEPS[type(layer)]
    B, T, _ = x.shape
    out = torch.zeros(B, T, layer.hidden_size, dtype=torch.float64)
    power = torch.zeros(B, T, dtype=torch.float64)
    finals = []
    for s in range(B):
        st = tuple(_d(v[s]) for v in state)
        for t in range(T):
            out[s, t], st, power[s, t] = step(layer, _d(x[s, t]), *st)
        finals.append(st)
    final = tuple(torch.stack([f[k] for f in finals]) for k in range(len(state)))
    return out, final, power
