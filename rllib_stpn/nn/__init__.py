"""Pure-torch layers: the STPN and the baseline memory cores."""

from rllib_stpn.nn.stpn import STPN, STPNState

__all__ = ["STPN", "STPNState"]
