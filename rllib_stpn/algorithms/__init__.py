"""RL algorithms for RLlib's new API stack that Ray no longer ships."""

from rllib_stpn.algorithms.a2c import A2C, A2CConfig
from rllib_stpn.algorithms.a2c_learner import A2CTorchLearner, A2CTrainingRows

__all__ = ["A2C", "A2CConfig", "A2CTorchLearner", "A2CTrainingRows"]
