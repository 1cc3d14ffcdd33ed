"""The plastic layers' equations written out one sample and one step at a time (float64).

Independent of `rllib_stpn.nn.plastic` (no shared helpers, python branches instead of
vectorised clipping, the gradient rule differentiated with respect to the plastic weights
themselves): the tests compare the layers and cores against these.
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
    A = torch.outer(h, h) * layer.fast_lr + layer.decay * A
    s = Wx @ x + Wh @ h + b
    h0 = torch.tanh(s)
    a = s + A @ h0
    mean = a.mean()
    var = ((a - mean) ** 2).mean()
    new_h = torch.tanh(g * (a - mean) / math.sqrt(float(var) + layer.ln_eps) + beta)
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
    new_A = lam * A + float(_d(layer.eta)) * torch.outer(h, x)
    return h, (new_A,), _power(x, G)


def _plastic(layer: PlasticRNN, x, h, P):
    z = torch.cat([x, h])
    W, b = _d(layer.weight), _d(layer.bias)
    new_h = torch.tanh((W + P) @ z + b)
    mod = float(_d(layer.lr_weight) @ new_h) + float(_d(layer.lr_bias))
    if layer.rule == "hebbian":
        eta, delta = math.tanh(mod), torch.outer(new_h, z)
    else:
        eta = 1.0 / (1.0 + math.exp(-mod))
        P_leaf = P.clone().requires_grad_(True)
        with torch.enable_grad():
            hh = torch.tanh((W + P_leaf) @ z + b)
            recon = _d(layer.decoder_weight) @ hh + _d(layer.decoder_bias)
            loss = 0.5 * ((recon - x) ** 2).sum()
            (grad,) = torch.autograd.grad(loss, P_leaf)
        delta = -grad
    norm = math.sqrt(float((delta * delta).sum()))
    if norm > layer.clip:
        delta = delta * (layer.clip / norm)
    lam = 1.0 / (1.0 + math.exp(-float(_d(layer.retention_logit))))
    new_P = lam * P + eta * delta
    return new_h, (new_h, new_P), _power(z, W + P)


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
