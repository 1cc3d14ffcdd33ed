"""rllib-stpn: Short-Term Plasticity Neurons for Ray RLlib.

Names resolve lazily, so an import costs what it uses: `from rllib_stpn import STPN` imports
torch but no Ray, and `import rllib_stpn` alone imports neither. The RLlib-facing names (A2C,
STPNModel, ...) import Ray and call :func:`register` on first access.
"""

from __future__ import annotations

import importlib  # already loaded by Python's start-up: Ctrl-C is caught from here on

__version__ = "0.1.0"

# name -> module that defines it.
_TORCH_NAMES = {
    "STPN": "rllib_stpn.nn.stpn",
    "STPNState": "rllib_stpn.nn.stpn",
    "count_parameters": "rllib_stpn.model_config",
    "count_core_parameters": "rllib_stpn.model_config",
    "core_hidden_size_for_params": "rllib_stpn.model_config",
    "hidden_size_for_params": "rllib_stpn.model_config",
}
# These import Ray; the first access to one of them also registers (see `register`).
_RLLIB_NAMES = {
    "A2C": "rllib_stpn.algorithms.a2c",
    "A2CConfig": "rllib_stpn.algorithms.a2c",
    "STPNModel": "rllib_stpn.rl_module",
    "STPNModelV2": "rllib_stpn.model_v2",
    "SynapticPowerCallback": "rllib_stpn.callbacks",
    "compact_states": "rllib_stpn.state_storage",
    "restore_algorithm": "rllib_stpn.checkpoints",
}
_LAZY = {**_TORCH_NAMES, **_RLLIB_NAMES}

__all__ = ["__version__", "register", *_LAZY]

_registered = False


def register() -> None:
    """Register the package with Ray: A2C with Tune as "A2C", the env ids ("stpn/Maze-v0", ...)
    with gymnasium and Tune, and STPNModelV2 as the old-stack custom model "stpn".

    Idempotent and cheap after the first call. The `rllib` command, the YAML path and the first
    access to an RLlib-facing name (``rllib_stpn.A2C``, ``STPNModel``, ...) call it; call it
    yourself when you name an env id or ``custom_model: stpn`` without using any of those.
    """
    global _registered
    if _registered:
        return
    from rllib_stpn.algorithms.a2c import register_a2c
    from rllib_stpn.envs import register_envs
    from rllib_stpn.model_v2 import register as register_model_v2

    register_a2c()
    register_envs()
    register_model_v2()
    _registered = True


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'rllib_stpn' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    if name in _RLLIB_NAMES:
        register()
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
