"""STPNModel configured by `rllib_lstm_model_config` is RLlib's default PPO LSTM module: with
RLlib's weights loaded it gives the same action-distribution inputs, values and states over
a sequence, step by step (sampling) and as one training chunk."""

from __future__ import annotations

import copy

import gymnasium as gym
import numpy as np
import pytest
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig
from ray.rllib.core.rl_module.rl_module import RLModuleSpec

from rllib_stpn.model_config import validate_model_config
from rllib_stpn.network import STPNNetwork
from rllib_stpn.rl_module import STPNModel
from rllib_stpn.rllib_lstm import load_rllib_lstm_weights, rllib_lstm_model_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

OBS = gym.spaces.Box(-2.0, 2.0, (4,), np.float32)
B, T = 3, 7
TOL = dict(rtol=1e-5, atol=1e-6)


def _modules(model_config, action_space):
    from ray.rllib.algorithms.ppo import PPOConfig

    config = (
        PPOConfig()
        .environment(observation_space=OBS, action_space=action_space)
        .rl_module(model_config=model_config)
    )
    torch.manual_seed(0)
    rllib = config.get_rl_module_spec().build()
    ours_config = rllib_lstm_model_config(config.model_config)
    torch.manual_seed(1)  # different initial weights: equality must come from the loading
    ours = RLModuleSpec(
        module_class=STPNModel,
        observation_space=OBS,
        action_space=action_space,
        model_config=ours_config,
    ).build()
    load_rllib_lstm_weights(ours, rllib)
    return rllib, ours, ours_config


def _to_rllib_state(state: dict, shared: bool) -> dict:
    """Ours: flat {"h", "c"(, "vf_h", "vf_c")} of (B, H); RLlib's: (B, num_layers=1, H), the
    value branch's under "critic"."""
    actor = {"h": state["h"].unsqueeze(1), "c": state["c"].unsqueeze(1)}
    if shared:
        return actor
    return {
        "actor": actor,
        "critic": {"h": state["vf_h"].unsqueeze(1), "c": state["vf_c"].unsqueeze(1)},
    }


def _zero_state(ours: STPNModel) -> dict:
    return {k: torch.zeros(B, *s) for k, s in ours.state_shapes().items()}


CASES = {
    # DefaultModelConfig's own default vf_share_layers=True: one LSTM for both heads.
    "shared": DefaultModelConfig(use_lstm=True, lstm_cell_size=12, fcnet_hiddens=[16, 8]),
    # A plain dict: PPO injects vf_share_layers=False, a second tokenizer + LSTM for the value.
    "separate": {"use_lstm": True, "lstm_cell_size": 12, "fcnet_hiddens": [16]},
    "head_layers": DefaultModelConfig(
        use_lstm=True,
        lstm_cell_size=12,
        fcnet_hiddens=[8],
        fcnet_activation="relu",
        head_fcnet_hiddens=[10, 6],
        head_fcnet_activation="tanh",
        vf_share_layers=False,
    ),
}


@pytest.mark.parametrize("action_space", [gym.spaces.Discrete(3), gym.spaces.Box(-1, 1, (2,))])
@pytest.mark.parametrize("case", sorted(CASES))
@torch.no_grad()
def test_rllib_weights_give_identical_outputs(case, action_space):
    rllib, ours, cfg = _modules(CASES[case], action_space)
    shared = cfg["value_branch"] == "shared"
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in rllib.parameters())
    torch.manual_seed(2)
    obs = torch.randn(B, 2 * T, *OBS.shape)
    ours_state, rllib_state = _zero_state(ours), _to_rllib_state(_zero_state(ours), shared)

    # Sampling: one step at a time, the state carried by each module itself.
    step_logits = []
    for t in range(T):
        batch = {Columns.OBS: obs[:, t : t + 1]}
        a = rllib.forward_inference({**batch, Columns.STATE_IN: rllib_state})
        b = ours.forward_inference({**batch, Columns.STATE_IN: ours_state})
        torch.testing.assert_close(
            b[Columns.ACTION_DIST_INPUTS], a[Columns.ACTION_DIST_INPUTS], **TOL
        )
        ours_state, rllib_state = b[Columns.STATE_OUT], a[Columns.STATE_OUT]
        torch.testing.assert_close(_to_rllib_state(ours_state, shared), rllib_state, **TOL)
        step_logits.append(b[Columns.ACTION_DIST_INPUTS])

    # Training: two chunks of T steps, the second from the first's final state.
    state_in = _zero_state(ours)
    for chunk in range(2):
        batch = {Columns.OBS: obs[:, chunk * T : (chunk + 1) * T]}
        a_batch = {**batch, Columns.STATE_IN: _to_rllib_state(state_in, shared)}
        b_batch = {**batch, Columns.STATE_IN: state_in}
        a, b = rllib.forward_train(a_batch), ours.forward_train(b_batch)
        torch.testing.assert_close(
            b[Columns.ACTION_DIST_INPUTS], a[Columns.ACTION_DIST_INPUTS], **TOL
        )
        values = rllib.compute_values(a_batch, a[Columns.EMBEDDINGS])
        torch.testing.assert_close(
            ours.compute_values(b_batch, b[Columns.EMBEDDINGS]), values, **TOL
        )
        torch.testing.assert_close(ours.compute_values(b_batch), values, **TOL)
        torch.testing.assert_close(rllib.compute_values(a_batch), values, **TOL)
        assert values.shape == (B, T) and values.std() > 0
        if chunk == 0:  # the training pass repeats the sampled steps
            torch.testing.assert_close(
                b[Columns.ACTION_DIST_INPUTS], torch.cat(step_logits, 1), **TOL
            )
        state_in = b[Columns.STATE_OUT]
        torch.testing.assert_close(_to_rllib_state(state_in, shared), a[Columns.STATE_OUT], **TOL)


def test_equal_config_follows_rllib_defaults():
    assert rllib_lstm_model_config(DefaultModelConfig(use_lstm=True)) == {
        "core": "lstm",
        "hidden_size": 256,
        "encoder": "mlp",
        "encoder_hiddens": [256, 256],
        "encoder_activation": "tanh",
        "head_hiddens": [],
        "head_activation": "relu",
        "value_branch": "shared",
        "max_seq_len": 20,
    }
    assert rllib_lstm_model_config({"use_lstm": True, "vf_share_layers": False})[
        "value_branch"
    ] == ("separate")


@pytest.mark.parametrize(
    "model_config, match",
    [
        ({"use_lstm": False}, "use_lstm=True"),
        ({"use_lstm": True, "fcnet_use_layernorm": True}, "fcnet_use_layernorm=True has no"),
        ({"use_lstm": True, "lstm_kernel_initializer": "xavier_uniform_"}, "allowed: None"),
        ({"use_lstm": True, "fcnet_hiddens": []}, "non-empty fcnet_hiddens"),
    ],
)
def test_settings_without_counterpart_raise(model_config, match):
    with pytest.raises(ValueError, match=match):
        rllib_lstm_model_config(model_config)


@pytest.mark.parametrize(
    "model_config, match",
    [
        ({"encoder": "mlp", "encoder_activation": "gelu"}, r"'encoder_activation'.*'relu', 'tanh'"),
        ({"encoder_activation": "tanh"}, "needs encoder 'mlp'"),
        ({"head_hiddens": 8}, "'head_hiddens'] must be a list of ints"),
        ({"head_hiddens": [8, 0]}, "'head_hiddens'] must be a positive int"),
        ({"head_activation": "sigmoid"}, r"'head_activation'.*one of"),
        ({"value_branch": "twin"}, r"\('shared', 'separate'\), got 'twin'"),
    ],
)
def test_new_keys_are_validated(model_config, match):
    with pytest.raises(ValueError, match=match):
        validate_model_config(model_config)


def test_defaults_keep_the_papers_layout():
    m = RLModuleSpec(
        module_class=STPNModel,
        observation_space=OBS,
        action_space=gym.spaces.Discrete(2),
        model_config={"encoder": "mlp"},
    ).build()
    assert isinstance(m.pi, torch.nn.Linear) and isinstance(m.vf, torch.nn.Linear)
    assert isinstance(m.encoder.net[1], torch.nn.ReLU) and m.vf_core is None
    assert {n.split(".")[0] for n, _ in m.named_parameters()} == {"encoder", "core", "pi", "vf"}


def test_separate_value_branch_of_an_stpn_core_keeps_its_plastic_state_compact():
    m = RLModuleSpec(
        module_class=STPNModel,
        observation_space=OBS,
        action_space=gym.spaces.Discrete(2),
        model_config={"core": "stpn", "hidden_size": 5, "value_branch": "separate"},
    ).build()
    assert m.compact_state_keys == ("F", "vf_F")
    assert set(m.get_initial_state()) == {"h", "F", "vf_h", "vf_F"}
    obs = torch.randn(2, 4, *OBS.shape)
    state = {k: torch.zeros(2, *v.shape) for k, v in m.get_initial_state().items()}
    out = m.forward_train({Columns.OBS: obs, Columns.STATE_IN: state})
    # The value reads its own branch: changing the policy core's weights leaves it alone.
    values = m.compute_values({Columns.OBS: obs, Columns.STATE_IN: state}, out[Columns.EMBEDDINGS])
    # The plain-torch forward (STPNNetwork) gives the same logits, values and state.
    logits, net_values, net_state, _ = STPNNetwork.forward(m, obs, state)
    torch.testing.assert_close(logits, out[Columns.ACTION_DIST_INPUTS])
    torch.testing.assert_close(net_values, values)
    torch.testing.assert_close(net_state, out[Columns.STATE_OUT])
    with torch.no_grad():
        m.core.stpn.weight.add_(1.0)
    again = m.compute_values({Columns.OBS: obs, Columns.STATE_IN: state})
    torch.testing.assert_close(again, values)
    assert not torch.equal(out[Columns.STATE_OUT]["vf_F"], state["vf_F"])


def test_loading_into_a_different_layout_raises():
    rllib, _, cfg = _modules(CASES["shared"], gym.spaces.Discrete(3))

    def build(**changes):
        return RLModuleSpec(
            module_class=STPNModel,
            observation_space=OBS,
            action_space=gym.spaces.Discrete(3),
            model_config={**cfg, **changes},
        ).build()

    with pytest.raises(ValueError, match="shares its LSTM.*value_branch 'separate'"):
        load_rllib_lstm_weights(build(value_branch="separate"), rllib)
    with pytest.raises(ValueError, match=r"tokenizer: RLlib's layers \[\(16, 4\), \(8, 16\)\]"):
        load_rllib_lstm_weights(build(encoder_hiddens=[16, 8, 8]), rllib)
    with pytest.raises(ValueError, match="core 'lstm', encoder 'mlp'"):
        load_rllib_lstm_weights(build(core="rnn"), rllib)


@pytest.mark.parametrize("case", ["shared", "separate"])
def test_gradients_of_a_masked_loss_on_a_padded_batch_are_identical(case):
    """What PPO's learner backpropagates: valid steps only, rows zero-padded after seq_lens."""
    rllib, ours, cfg = _modules(CASES[case], gym.spaces.Discrete(3))
    shared = cfg["value_branch"] == "shared"
    torch.manual_seed(3)
    obs = torch.randn(B, T, *OBS.shape)
    seq_lens = torch.tensor([T - 3, T, 2])
    obs[torch.arange(T) >= seq_lens.unsqueeze(1)] = 0.0
    mask = (torch.arange(T) < seq_lens.unsqueeze(1)).float()
    state = {k: 0.1 * torch.randn_like(v) for k, v in _zero_state(ours).items()}
    weights = torch.randn(B, T, 3)
    for module, state_in in ((rllib, _to_rllib_state(state, shared)), (ours, state)):
        batch = {Columns.OBS: obs, Columns.STATE_IN: state_in, Columns.SEQ_LENS: seq_lens}
        out = module.forward_train(batch)
        values = module.compute_values(batch, out[Columns.EMBEDDINGS])
        loss = ((out[Columns.ACTION_DIST_INPUTS] * weights).sum(-1) + values**2) * mask
        module.zero_grad()
        loss.sum().backward()
    # RLlib's gradients, mapped onto our layout by the weight loader itself.
    grads = copy.deepcopy(rllib)
    with torch.no_grad():
        for g, p in zip(grads.parameters(), rllib.parameters()):
            g.copy_(p.grad)
    mapped = copy.deepcopy(ours)
    load_rllib_lstm_weights(mapped, grads)
    for (name, p), g in zip(ours.named_parameters(), mapped.parameters()):
        torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-6, msg=name)
