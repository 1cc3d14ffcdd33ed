"""rllib-stpn: Short-Term Plasticity Neurons for Ray RLlib."""

from rllib_stpn.nn import STPN, STPNState

__version__ = "0.1.0"

__all__ = ["STPN", "STPNState", "__version__"]
