"""The STPN paper's comparison cores, and the two rules of PlasticRNNs, as pure-torch layers.

Each layer runs like `torch.nn.LSTM(batch_first=True)`: `out, state = layer(x, state)` with
x (B, T, I), out (B, T, H) and `state` a NamedTuple of per-sample tensors (None for zeros);
`layer(x, state, return_power=True)` also returns the synaptic power P_t (B, T) of SPEC
section 1: the TOTAL sum_ij z_t[j]^2 |G_t[i, j]| over the efficacies G_t onto the layer's
neurons that the step applies to its presynaptic vector z_t (slow + plastic part), biases
excluded. Read-out units (a neuromodulator, PlasticRNN's out_fc) are not counted.
`seq_lens=` (B,) marks zero-padded rows: the loop skips the padding, as the STPN layer does.

- FastWeightsRNN: Ba et al. 2016 fast weights      } as the STPN authors ran them
- ModPlastRNN: Miconi et al. 2019 (Backpropamine)   } (Scripts/STPLayers.py of
- HebbFF: Tyulmankov et al. 2022                    }  NeuromorphicComputing/stpn)
- PlasticRNN: Duan et al. 2023 (yuvenduan/PlasticRNNs), Hebbian or gradient rule.

Sources, equations and deviations: docs/fidelity.md, "Comparison cores".
"""

from rllib_stpn.nn.plastic.base import PlasticLayer, synaptic_power
from rllib_stpn.nn.plastic.baselines import (
    FastWeightsRNN,
    FastWeightsState,
    HebbFF,
    HebbFFState,
    ModPlastRNN,
    ModPlastState,
)
from rllib_stpn.nn.plastic.plastic_rnn import PLASTIC_RULES, PlasticRNN, PlasticRNNState

__all__ = [
    "PLASTIC_RULES",
    "FastWeightsRNN",
    "FastWeightsState",
    "HebbFF",
    "HebbFFState",
    "ModPlastRNN",
    "ModPlastState",
    "PlasticLayer",
    "PlasticRNN",
    "PlasticRNNState",
    "synaptic_power",
]
