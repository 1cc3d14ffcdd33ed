"""STPNModelV2 (old API stack): same math as STPNModel, state list layout, PPO trains."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.models import ModelCatalog

import rllib_stpn
from rllib_stpn.model_v2 import STPNModelV2
from rllib_stpn.nn.cores import CORES
from rllib_stpn.rl_module import STPNModel

rllib_stpn.register()  # the custom model "stpn"

OBS = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
ACT = gym.spaces.Discrete(2)
H = 5


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_v2(core: str, **extra) -> STPNModelV2:
    model_config = {
        "custom_model": "stpn",
        "max_seq_len": 20,
        "custom_model_config": {"core": core, "hidden_size": H, **extra},
    }
    return ModelCatalog.get_model_v2(OBS, ACT, 2, model_config, framework="torch")


def test_registered():
    assert rllib_stpn.STPNModelV2 is STPNModelV2
    assert isinstance(make_v2("stpn"), STPNModelV2)


@pytest.mark.parametrize("core", CORES)
def test_same_outputs_as_rl_module(core):
    """One implementation of the math: V2 with the RLModule's weights gives its outputs."""
    torch.manual_seed(1)
    v2 = make_v2(core)
    module = STPNModel(
        observation_space=OBS,
        action_space=ACT,
        model_config={"core": core, "hidden_size": H},
    )
    module.load_state_dict(v2.state_dict())
    state0 = v2.get_initial_state()
    expected_shapes = {
        "stpn": [(H,), (H * (3 + H),)],
        "stpnf": [(H,), (H * 3,)],
        "lstm": [(H,), (H,)],
        "gru": [(H,)],
        "rnn": [(H,)],
        "mlp": [],
        "fastweights": [(H,), (H * H,)],
        "modplast": [(H,), (H * H,)],
        "hebbff": [(H * 3,)],
        "plastic_hebbian": [(H,), (H * 3 + 2 * H * H + (H + 5) * H,)],
        "plastic_gradient": [(H,), (H * 3 + 2 * H * H + (H + 5) * (H + 1) + 3 * H,)],
    }[core]
    assert [tuple(s.shape) for s in state0] == expected_shapes
    B, T = 3, 4
    obs = torch.randn(B, T, 3)
    with torch.no_grad():
        if core == "mlp":
            flat = obs.reshape(B * T, 3)
            logits, state = v2({"obs": flat, "obs_flat": flat}, [], None)
            ref = module.forward_train({Columns.OBS: flat})
            torch.testing.assert_close(logits, ref[Columns.ACTION_DIST_INPUTS])
            assert state == []
            return
        states = [s.unsqueeze(0).repeat(B, 1) for s in state0]
        flat = obs.reshape(B * T, 3)
        seq_lens = torch.full((B,), T, dtype=torch.int32)
        logits, state = v2({"obs": flat, "obs_flat": flat}, states, seq_lens)
        values = v2.value_function()
        batch = {
            Columns.OBS: obs,
            Columns.STATE_IN: {
                k: torch.from_numpy(v).repeat(B, 1) for k, v in module.get_initial_state().items()
            },
        }
        ref = module.forward_train(batch)
    torch.testing.assert_close(logits, ref[Columns.ACTION_DIST_INPUTS].reshape(B * T, 2))
    torch.testing.assert_close(values, module.compute_values(batch).reshape(-1))
    for s, k in zip(state, module.get_initial_state()):
        torch.testing.assert_close(s, ref[Columns.STATE_OUT][k])


def test_stpn_variant_keys_reach_the_layer():
    v2 = make_v2("stpnf", f_clamp=0.1, post_update_norm=True, weight_init="input")
    layer = v2.core.stpn
    assert (layer.f_clamp, layer.post_update_norm, layer.weight_init) == (0.1, True, "input")
    with pytest.raises(ValueError, match="f_clamp"):
        make_v2("stpn", f_clamp=-1.0)


def test_bad_custom_model_config():
    with pytest.raises(ValueError, match="unknown model_config key 'cell'"):
        make_v2("stpn", cell=3)
    with pytest.raises(ValueError, match="model\\['max_seq_len'\\]"):
        make_v2("stpn", max_seq_len=7)


def test_old_stack_ppo_trains(ray_session):
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.examples.envs.classes.stateless_cartpole import StatelessCartPole

    config = (
        PPOConfig()
        .api_stack(enable_rl_module_and_learner=False, enable_env_runner_and_connector_v2=False)
        .environment(StatelessCartPole)
        .env_runners(num_env_runners=0, rollout_fragment_length=200)
        .training(
            train_batch_size=400,
            minibatch_size=100,
            num_epochs=2,
            lr=1e-3,
            model={
                "custom_model": "stpn",
                "max_seq_len": 10,
                "custom_model_config": {"core": "stpn", "hidden_size": 16},
            },
        )
        .debugging(seed=0)
    )
    algo = config.build_algo()
    try:
        before = [p.detach().clone() for p in algo.get_policy().model.parameters()]
        for _ in range(2):
            result = algo.train()
        assert result["num_env_steps_sampled_lifetime"] >= 800
        policy = algo.get_policy()
        assert isinstance(policy.model, STPNModelV2)
        after = list(policy.model.parameters())
        assert all(torch.isfinite(p).all() for p in after)
        # Every part trained, the plastic Λ and Γ included.
        assert all(not torch.equal(a, b) for a, b in zip(after, before))
        # Stepping with the state list.
        state = policy.get_initial_state()
        action, state_out, _ = policy.compute_single_action(np.zeros(2, np.float32), state)
        assert [s.shape for s in state_out] == [(16,), (16 * 18,)]
    finally:
        algo.stop()


def test_rllib_layout_options_on_the_old_stack():
    """MLP heads and a tanh encoder build here too; a separate value branch is new-stack only."""
    m = make_v2("lstm", encoder="mlp", encoder_activation="tanh", head_hiddens=[4])
    assert isinstance(m.encoder.net[1], torch.nn.Tanh) and len(m.pi) == 3
    assert [tuple(s.shape) for s in m.get_initial_state()] == [(H,), (H,)]
    with pytest.raises(ValueError, match="value_branch'\\]='separate' needs the new API stack"):
        make_v2("lstm", value_branch="separate")
