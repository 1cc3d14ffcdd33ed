"""A2C's loss options (the STPN authors' maze loss): sum(p^2) penalty, reductions, Adam eps."""

from __future__ import annotations

import copy
import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.env.single_agent_episode import SingleAgentEpisode

from rllib_stpn import A2CConfig, STPNModel
from rllib_stpn.algorithms.a2c_loss import exploration_penalty, reduce_steps

OBS_SPACE = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
ACT_SPACE = gym.spaces.Discrete(3)
LENGTHS = (5, 4, 3)  # three Monte-Carlo episode chunks, 12 steps


def _episodes(seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        {
            "obs": rng.uniform(-1, 1, (n + 1, 4)).astype(np.float32),
            "actions": rng.integers(0, ACT_SPACE.n, n),
            "rewards": rng.normal(size=n).astype(np.float32),
            "terminated": False,
            "truncated": True,
        }
        for n in LENGTHS
    ]


def _rllib(ep: dict, states: dict[str, np.ndarray] | None = None) -> SingleAgentEpisode:
    extra = {}
    if states is not None:  # what the sampler stores for a recurrent module: its state per step
        n = len(ep["rewards"])
        extra[Columns.STATE_OUT] = [{k: v + 0.1 * t for k, v in states.items()} for t in range(n)]
    return SingleAgentEpisode(
        observations=list(ep["obs"]),
        actions=list(ep["actions"]),
        rewards=list(ep["rewards"]),
        extra_model_outputs=extra,
        terminated=ep["terminated"],
        truncated=ep["truncated"],
        len_lookback_buffer=0,
    ).to_numpy()


def _config(spec: RLModuleSpec | None = None, **training) -> A2CConfig:
    config = (
        A2CConfig()
        .environment(observation_space=OBS_SPACE, action_space=ACT_SPACE)
        .training(
            **{"gamma": 0.9, "bootstrap_truncated": False, "grad_clip": None, "lr": 1e-3} | training
        )
    )
    if spec is not None:
        return config.rl_module(rl_module_spec=spec)
    return config.rl_module(model_config={"fcnet_hiddens": [8]})


def _authors_loss(module, episodes, *, gamma, vf_coeff, penalty_coeff, reduction):
    """The maze loss of the authors' run_maze.py written out one episode at a time.

    Per step: -log pi(a_t) A_t + vf_coeff (R_t - V_t)^2 + penalty_coeff sum_a pi(a|s_t)^2, with
    R_t the discounted reward sum to the episode's end and A_t = R_t - V_t (no gradient).
    "mean": averaged over all steps; "sum": summed over all steps; "sum_per_episode":
    summed over an episode's steps, averaged over episodes.
    """
    per_episode, steps = [], 0
    for ep in episodes:
        obs = torch.from_numpy(ep["obs"])
        logits = module.forward_train({Columns.OBS: obs})[Columns.ACTION_DIST_INPUTS]
        v = module.compute_values({Columns.OBS: obs})
        n = len(ep["rewards"])
        returns, g = [], 0.0
        for r in reversed(ep["rewards"].tolist()):
            g = r + gamma * g
            returns.append(g)
        ret = torch.tensor(returns[::-1])
        probs = torch.softmax(logits[:n], -1)
        logp = torch.log(probs.gather(1, torch.from_numpy(ep["actions"])[:, None]))[:, 0]
        adv = ret - v[:n].detach()
        terms = -logp * adv + vf_coeff * (ret - v[:n]) ** 2 + penalty_coeff * (probs**2).sum(-1)
        per_episode.append(terms.sum())
        steps += n
    total = torch.stack(per_episode).sum()
    return total / {"mean": steps, "sum": 1, "sum_per_episode": len(episodes)}[reduction]


def test_penalty_and_reductions_by_hand():
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]])
    # probs (1/4, 3/4) -> 1/16 + 9/16; (1/2, 1/2) -> 1/2
    pen = exploration_penalty(None, logits, "sum_squared_probs")
    torch.testing.assert_close(pen, torch.tensor([0.625, 0.5]))
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    assert reduce_steps(x, mask, "mean", 2).item() == pytest.approx(7.0 / 3)
    assert reduce_steps(x, mask, "sum", 2).item() == pytest.approx(7.0)
    assert reduce_steps(x, mask, "sum_per_episode", 2).item() == pytest.approx(3.5)


@pytest.mark.parametrize("reduction", ["mean", "sum", "sum_per_episode"])
def test_gradient_equals_authors_maze_loss(reduction):
    torch.manual_seed(0)
    gamma, vf_coeff, coeff = 0.9, 0.1, 0.03
    learner = _config(
        vf_loss_coeff=vf_coeff,
        entropy_coeff=coeff,
        exploration_loss="sum_squared_probs",
        loss_reduction=reduction,
    ).build_learner()
    module = learner.module[DEFAULT_MODULE_ID]
    reference = copy.deepcopy(module)
    episodes = _episodes()
    learner.update(episodes=[_rllib(ep) for ep in episodes])
    loss = _authors_loss(
        reference,
        episodes,
        gamma=gamma,
        vf_coeff=vf_coeff,
        penalty_coeff=coeff,
        reduction=reduction,
    )
    loss.backward()
    for (name, p), (_, p_ref) in zip(module.named_parameters(), reference.named_parameters()):
        assert p_ref.grad is not None and p_ref.grad.abs().sum() > 0, name
        torch.testing.assert_close(p.grad, p_ref.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_summed_losses_on_recurrent_rows_scale_the_mean():
    """STPN module trained in max_seq_len rows (episodes longer than one row): "sum" is the
    mean times the steps, "sum_per_episode" counts episode chunks, not rows, and every
    parameter of the core gets gradient."""
    spec = RLModuleSpec(
        module_class=STPNModel,
        model_config={
            "core": "stpn",
            "hidden_size": 5,
            "max_seq_len": 2,
            "f_clamp": 1.0,
            "compact_states": False,
        },
    )

    def grads(reduction: str) -> dict[str, torch.Tensor]:
        torch.manual_seed(1)
        config = _config(
            spec, exploration_loss="sum_squared_probs", loss_reduction=reduction, entropy_coeff=0.03
        )
        learner = config.build_learner()
        states = learner.module[DEFAULT_MODULE_ID].get_initial_state()
        learner.update(episodes=[_rllib(ep, states) for ep in _episodes(2)])
        return {n: p.grad.clone() for n, p in learner.module[DEFAULT_MODULE_ID].named_parameters()}

    mean, summed, per_episode = grads("mean"), grads("sum"), grads("sum_per_episode")
    for name, g in mean.items():
        assert torch.isfinite(g).all() and g.abs().sum() > 0, name
        torch.testing.assert_close(summed[name], sum(LENGTHS) * g, rtol=1e-4, atol=1e-6)
        scale = sum(LENGTHS) / len(LENGTHS)
        torch.testing.assert_close(per_episode[name], scale * g, rtol=1e-4, atol=1e-7, msg=name)


def test_adam_epsilon_reaches_the_optimizer():
    learner = _config(adam_epsilon=1e-4).build_learner()
    (optimizer,) = learner._optimizer_parameters  # the one default optimizer
    assert optimizer.param_groups[0]["eps"] == 1e-4
    assert _config().build_learner().get_optimizer().param_groups[0]["eps"] == 1e-8


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"exploration_loss": "simpson"}, "exploration_loss"),
        ({"loss_reduction": "total"}, "loss_reduction"),
        ({"adam_epsilon": 0.0}, "adam_epsilon"),
        ({"adam_epsilon": "1e-4"}, "adam_epsilon"),
    ],
)
def test_bad_loss_options_raise_one_line_error(kwargs, needle):
    with pytest.raises(ValueError, match=needle) as info:
        A2CConfig().environment("CartPole-v1").training(**kwargs).validate()
    assert "\n" not in str(info.value)


def test_sum_squared_probs_needs_discrete_actions():
    config = (
        A2CConfig()
        .environment(
            observation_space=OBS_SPACE, action_space=gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        )
        .training(exploration_loss="sum_squared_probs")
    )
    with pytest.raises(ValueError, match="needs Discrete actions") as info:
        config.build_learner()
    assert "\n" not in str(info.value)


def test_sum_squared_probs_penalty_spreads_a_concentrated_policy():
    """Zero rewards and no critic: only the penalty acts, and training lowers sum_a pi^2."""
    torch.manual_seed(0)
    learner = _config(
        use_critic=False, exploration_loss="sum_squared_probs", entropy_coeff=1.0, lr=0.05
    ).build_learner()
    module = learner.module[DEFAULT_MODULE_ID]
    (bias,) = [p for n, p in module.named_parameters() if n.startswith("pi") and p.shape == (3,)]
    with torch.no_grad():
        bias.copy_(torch.tensor([4.0, 0.0, 0.0]))  # pi(a=0) ~ 0.96 everywhere
    episodes = _episodes(3)
    for ep in episodes:
        ep["rewards"][:] = 0.0
    obs = torch.from_numpy(np.concatenate([ep["obs"] for ep in episodes]))

    def concentration() -> float:
        with torch.no_grad():
            logits = module.forward_train({Columns.OBS: obs})[Columns.ACTION_DIST_INPUTS]
        return exploration_penalty(None, logits, "sum_squared_probs").mean().item()

    before = concentration()
    for _ in range(30):
        learner.update(episodes=[_rllib(ep) for ep in episodes])
    after = concentration()
    assert before > 0.85 and after < before - 0.3, (before, after)
