"""rllib-stpn: Short-Term Plasticity Neurons for Ray RLlib."""

from rllib_stpn.nn import STPN, STPNState

__version__ = "0.1.0"

__all__ = ["STPN", "STPNState", "__version__"]

# A2C (Ray 2.60 dropped it); registering makes tune.Tuner("A2C") and YAML `run: A2C` resolve.
from rllib_stpn.algorithms import A2C, A2CConfig  # noqa: E402
from rllib_stpn.algorithms.a2c import register_a2c  # noqa: E402

register_a2c()
__all__ += ["A2C", "A2CConfig"]

# Env ids ("stpn/Maze-v0", ...) for gymnasium.make and Tune/RLlib; idempotent, lazy entry points.
from rllib_stpn.envs import register_envs  # noqa: E402

register_envs()

# STPNModel (new stack), STPNModelV2 (old stack, custom model "stpn"), power metric, sizing helper.
from rllib_stpn.callbacks import SynapticPowerCallback  # noqa: E402
from rllib_stpn.model_config import (  # noqa: E402
    core_hidden_size_for_params,
    count_core_parameters,
    count_parameters,
    hidden_size_for_params,
)
from rllib_stpn.model_v2 import STPNModelV2  # noqa: E402
from rllib_stpn.model_v2 import register as _register_model_v2  # noqa: E402
from rllib_stpn.rl_module import STPNModel  # noqa: E402

# STPN states stored once per training sequence, not once per env step: A2C does it by itself,
# other algorithms opt in with `config = compact_states(config)`.
from rllib_stpn.state_storage import compact_states  # noqa: E402

_register_model_v2()
__all__ += [
    "STPNModel",
    "STPNModelV2",
    "SynapticPowerCallback",
    "compact_states",
    "core_hidden_size_for_params",
    "count_core_parameters",
    "count_parameters",
    "hidden_size_for_params",
]
