"""Pure-torch layers: the STPN and the baseline memory cores."""

from rllib_stpn.nn.plastic import (
    FastWeightsRNN,
    FastWeightsState,
    HebbFF,
    HebbFFState,
    ModPlastRNN,
    ModPlastState,
    PlasticRNN,
    PlasticRNNState,
)
from rllib_stpn.nn.stpn import STPN, STPNState

__all__ = [
    "STPN",
    "STPNState",
    "FastWeightsRNN",
    "FastWeightsState",
    "ModPlastRNN",
    "ModPlastState",
    "HebbFF",
    "HebbFFState",
    "PlasticRNN",
    "PlasticRNNState",
]
