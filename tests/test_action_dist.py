"""model_config["action_dist"]: the authors' softplus-std Gaussian (AtariMujoco/rllib_nets.py)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.distribution.torch.torch_distribution import TorchDiagGaussian

from rllib_stpn.distributions import TorchSoftplusGaussian
from rllib_stpn.rl_module import STPNModel

OBS = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
BOX = gym.spaces.Box(-3.0, 3.0, (2,), np.float32)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_softplus_gaussian_is_normal_with_softplus_std():
    torch.manual_seed(0)
    inputs = torch.randn(5, 4, requires_grad=True)
    actions = torch.randn(5, 2)
    dist = TorchSoftplusGaussian.from_logits(inputs)
    mean, raw = inputs[:, :2], inputs[:, 2:]
    std = torch.log1p(torch.exp(raw))  # softplus by hand
    ref = torch.distributions.Normal(mean, std)
    torch.testing.assert_close(dist.logp(actions), ref.log_prob(actions).sum(-1))
    torch.testing.assert_close(dist.entropy(), ref.entropy().sum(-1))
    torch.testing.assert_close(dist.to_deterministic().sample(), mean)
    other = TorchSoftplusGaussian.from_logits(inputs.detach() + 0.3)
    kl = torch.distributions.kl_divergence(ref, other._dist).sum(-1)
    torch.testing.assert_close(dist.kl(other), kl)
    assert dist.sample().shape == (5, 2)
    # Differs from RLlib's log-std Gaussian: at raw 0 the std is ln 2, not 1.
    zero = torch.zeros(1, 4)
    assert TorchSoftplusGaussian.from_logits(zero)._dist.scale[0, 0] == pytest.approx(np.log(2))
    assert TorchDiagGaussian.from_logits(zero)._dist.scale[0, 0] == pytest.approx(1.0)
    # The std half of the inputs gets gradient sigmoid(raw) through the std.
    dist.logp(actions).sum().backward()
    assert inputs.grad[:, 2:].abs().sum() > 0


def _module(**cfg) -> STPNModel:
    torch.manual_seed(0)
    return STPNModel(
        observation_space=OBS,
        action_space=cfg.pop("action_space", BOX),
        model_config={"core": "stpnf", "hidden_size": 6, **cfg},
    )


def test_module_uses_the_selected_distribution_in_every_phase():
    module = _module(action_dist="softplus_gaussian")
    for getter in ("inference", "exploration", "train"):
        assert getattr(module, f"get_{getter}_action_dist_cls")() is TorchSoftplusGaussian
    default = _module()
    assert default.get_train_action_dist_cls() is TorchDiagGaussian
    batch = {
        Columns.OBS: torch.randn(3, 7, 4),
        Columns.STATE_IN: {
            k: torch.zeros(3, *v.shape) for k, v in module.get_initial_state().items()
        },
    }
    inputs = module.forward_exploration(batch)[Columns.ACTION_DIST_INPUTS]
    assert inputs.shape == (3, 7, 4)  # mean and pre-softplus std of 2 actions
    dist = module.get_exploration_action_dist_cls().from_logits(inputs)
    torch.testing.assert_close(dist._dist.scale, torch.nn.functional.softplus(inputs[..., 2:]))


@pytest.mark.parametrize(
    "cfg,needle",
    [
        ({"action_dist": "softplus_gaussian", "action_space": gym.spaces.Discrete(3)}, "1-D Box"),
        ({"action_dist": "beta"}, "action_dist"),
    ],
)
def test_bad_action_dist_is_one_line_error(cfg, needle):
    with pytest.raises(ValueError, match=needle) as info:
        _module(**cfg)
    assert "\n" not in str(info.value)


def test_ppo_trains_with_softplus_gaussian(ray_session, tmp_path, monkeypatch):
    """One PPO iteration on InvertedPendulum with the authors' STPNf + softplus Gaussian."""
    pytest.importorskip("mujoco")
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    config = (
        PPOConfig()
        .environment("stpn/InvertedPendulum-v0")
        .env_runners(num_env_runners=0, num_envs_per_env_runner=1)
        .training(train_batch_size_per_learner=128, minibatch_size=64, num_epochs=1)
        .rl_module(
            rl_module_spec=RLModuleSpec(
                module_class=STPNModel,
                model_config={
                    "core": "stpnf",
                    "hidden_size": 8,
                    "normalize": False,
                    "f_clamp": 0.1,
                    "weight_init": "input",
                    "action_dist": "softplus_gaussian",
                    "max_seq_len": 16,
                    "compact_states": False,
                },
            )
        )
        .debugging(seed=0)
    )
    import rllib_stpn

    rllib_stpn.register()
    # The algorithm's log dir (Trainable's default: a new dir in ~/ray_results) goes to tmp.
    monkeypatch.setattr("ray.tune.trainable.trainable.DEFAULT_STORAGE_PATH", str(tmp_path))
    algo = config.build_algo()
    try:
        before = {k: v.clone() for k, v in algo.get_module().state_dict().items()}
        result = algo.train()
        learner = result["learners"]["default_policy"]
        assert np.isfinite(learner["total_loss"]) and np.isfinite(learner["entropy"])
        after = algo.get_module().state_dict()
        assert any(not torch.equal(before[k], after[k]) for k in before)
        assert algo.get_module().get_train_action_dist_cls() is TorchSoftplusGaussian
    finally:
        algo.stop()


def test_old_stack_model_refuses_action_dist():
    from rllib_stpn.model_v2 import STPNModelV2

    model_config = {
        "max_seq_len": 20,
        "custom_model_config": {"core": "stpnf", "action_dist": "softplus_gaussian"},
    }
    with pytest.raises(ValueError, match="custom_action_dist") as info:
        STPNModelV2(OBS, BOX, 4, model_config, "m")
    assert "\n" not in str(info.value)
