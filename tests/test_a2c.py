"""A2C on RLlib's new API stack: exact gradient, config checks, learning, recurrent modules."""

from __future__ import annotations

import copy

import gymnasium as gym
import numpy as np
import pytest
import torch
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.columns import Columns
from ray.rllib.env.single_agent_episode import SingleAgentEpisode

from rllib_stpn import A2C, A2CConfig

OBS_SPACE = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
ACT_SPACE = gym.spaces.Discrete(3)


def _hand_made_episodes(seed: int = 0) -> list[dict]:
    """Three episodes: terminated, cut by the rollout (not done), truncated by the env."""
    rng = np.random.default_rng(seed)
    episodes = []
    for length, terminated, truncated in ((5, True, False), (4, False, False), (3, False, True)):
        episodes.append(
            {
                "obs": rng.uniform(-1, 1, (length + 1, 4)).astype(np.float32),
                "actions": rng.integers(0, ACT_SPACE.n, length),
                "rewards": rng.normal(size=length).astype(np.float32),
                "terminated": terminated,
                "truncated": truncated,
            }
        )
    return episodes


def _to_rllib_episode(ep: dict) -> SingleAgentEpisode:
    return SingleAgentEpisode(
        observations=list(ep["obs"]),
        actions=list(ep["actions"]),
        rewards=list(ep["rewards"]),
        terminated=ep["terminated"],
        truncated=ep["truncated"],
        len_lookback_buffer=0,
    ).to_numpy()


def _flat_forward(module):
    def forward(ep: dict) -> tuple[torch.Tensor, torch.Tensor]:
        obs = torch.from_numpy(ep["obs"])
        logits = module.forward_train({Columns.OBS: obs})[Columns.ACTION_DIST_INPUTS]
        return logits, module.compute_values({Columns.OBS: obs})

    return forward


def _textbook_a2c_loss(forward, episodes, *, gamma, lambda_, vf_coeff, ent_coeff, bootstrap):
    """A2C loss written out in plain torch, one episode at a time.

    Targets are lambda-returns G_t = r_t + gamma * ((1 - lambda) V(s_{t+1}) + lambda G_{t+1}),
    started from G_T = V(s_T) for an unfinished episode (0 if terminated or if bootstrapping
    is off); for lambda = 1 this is the classic n-step return. Advantage A_t = G_t - V(s_t).
    """
    logps, advs, values, targets, entropies = [], [], [], [], []
    for ep in episodes:
        logits, v = forward(ep)  # for s_0, ..., s_T
        log_probs = torch.log_softmax(logits, dim=-1)
        v_const = v.detach()
        T = len(ep["rewards"])
        # Without bootstrapping, every chunk (env-truncated or cut by the rollout) ends at 0.
        done = ep["terminated"] or not bootstrap
        g = torch.tensor(0.0) if done else v_const[T]
        rewards = torch.from_numpy(ep["rewards"])
        returns = [None] * T
        for t in reversed(range(T)):
            v_next = v_const[t + 1] if (t + 1 < T or not done) else torch.tensor(0.0)
            g = rewards[t] + gamma * ((1 - lambda_) * v_next + lambda_ * g)
            returns[t] = g
        returns = torch.stack(returns)
        acts = torch.from_numpy(ep["actions"]).long()
        logps.append(log_probs[:T].gather(1, acts[:, None])[:, 0])
        entropies.append(-(log_probs[:T].exp() * log_probs[:T]).sum(-1))
        advs.append(returns - v_const[:T])
        values.append(v[:T])
        targets.append(returns)
    logp, adv, value, target, entropy = map(torch.cat, (logps, advs, values, targets, entropies))
    return (
        -(logp * adv).mean()
        + vf_coeff * ((value - target) ** 2).mean()
        - ent_coeff * entropy.mean()
    )


@pytest.mark.parametrize(
    "lambda_,bootstrap",
    [(1.0, True), (1.0, False), (0.6, True)],
    ids=["n-step", "monte-carlo", "gae"],
)
def test_gradient_equals_textbook_a2c(lambda_: float, bootstrap: bool) -> None:
    torch.manual_seed(0)
    gamma, vf_coeff, ent_coeff = 0.9, 0.3, 0.05
    config = (
        A2CConfig()
        .environment(observation_space=OBS_SPACE, action_space=ACT_SPACE)
        .training(
            gamma=gamma,
            lambda_=lambda_,
            bootstrap_truncated=bootstrap,
            vf_loss_coeff=vf_coeff,
            entropy_coeff=ent_coeff,
            grad_clip=None,
            lr=1e-3,
        )
        .rl_module(model_config={"fcnet_hiddens": [8]})
    )
    learner = config.build_learner()
    module = learner.module[DEFAULT_MODULE_ID]
    reference = copy.deepcopy(module)
    episodes = _hand_made_episodes()

    learner.update(episodes=[_to_rllib_episode(ep) for ep in episodes])

    loss = _textbook_a2c_loss(
        _flat_forward(reference),
        episodes,
        gamma=gamma,
        lambda_=lambda_,
        vf_coeff=vf_coeff,
        ent_coeff=ent_coeff,
        bootstrap=bootstrap,
    )
    loss.backward()
    # After `update`, each parameter holds the gradient of the learner's loss at the
    # pre-update weights (the Adam step does not touch .grad).
    checked = 0
    for (name, p), (_, p_ref) in zip(module.named_parameters(), reference.named_parameters()):
        assert p_ref.grad is not None, name
        torch.testing.assert_close(p.grad, p_ref.grad, rtol=1e-4, atol=1e-6, msg=name)
        checked += int(p_ref.grad.abs().sum() > 0)
    assert checked >= 4  # policy and value parameters all received gradient


def test_recurrent_gradient_is_truncated_bptt_over_max_seq_len_chunks() -> None:
    """LSTM module, max_seq_len=4 < episode lengths: BPTT restarts from the stored state."""
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec
    from ray.rllib.examples.rl_modules.classes.lstm_containing_rlm import (
        LSTMContainingRLModule,
    )

    torch.manual_seed(0)
    max_seq_len, gamma, vf_coeff, ent_coeff = 4, 0.9, 0.3, 0.05
    spec = RLModuleSpec(
        module_class=LSTMContainingRLModule,
        model_config={"lstm_cell_size": 4, "dense_layers": [4], "max_seq_len": max_seq_len},
    )
    config = (
        A2CConfig()
        .environment(observation_space=OBS_SPACE, action_space=ACT_SPACE)
        .training(
            gamma=gamma, vf_loss_coeff=vf_coeff, entropy_coeff=ent_coeff, grad_clip=None, lr=1e-3
        )
        .rl_module(rl_module_spec=spec)
    )
    learner = config.build_learner()
    module = learner.module[DEFAULT_MODULE_ID]
    reference = copy.deepcopy(module)
    episodes = _hand_made_episodes(2)

    # States the sampler would have stored: the LSTM state after each observation.
    for ep in episodes:
        with torch.no_grad():
            out_h, out_c, state = [], [], None
            for o in torch.from_numpy(ep["obs"]):
                _, state = reference._lstm(o[None, None], state)
                out_h.append(state[0][0, 0].clone())
                out_c.append(state[1][0, 0].clone())
        ep["h"], ep["c"] = torch.stack(out_h), torch.stack(out_c)
    rllib_episodes = []
    for ep in episodes:
        T = len(ep["rewards"])
        rllib_episodes.append(
            SingleAgentEpisode(
                observations=list(ep["obs"]),
                actions=list(ep["actions"]),
                rewards=list(ep["rewards"]),
                extra_model_outputs={
                    Columns.STATE_OUT: [
                        {"h": ep["h"][t].numpy(), "c": ep["c"][t].numpy()} for t in range(T)
                    ]
                },
                terminated=ep["terminated"],
                truncated=ep["truncated"],
                len_lookback_buffer=0,
            ).to_numpy()
        )
    learner.update(episodes=rllib_episodes)

    def chunked_forward(ep: dict) -> tuple[torch.Tensor, torch.Tensor]:
        obs = torch.from_numpy(ep["obs"])
        outs = []
        for start in range(0, len(obs), max_seq_len):
            if start == 0:
                state = (torch.zeros(1, 1, 4), torch.zeros(1, 1, 4))
            else:  # the stored state: data, no gradient into the previous chunk
                state = (ep["h"][start - 1][None, None], ep["c"][start - 1][None, None])
            out, _ = reference._lstm(obs[None, start : start + max_seq_len], state)
            outs.append(out[0])
        emb = reference._fc_net(torch.cat(outs))
        return reference._pi_head(emb), reference._values(emb)[:, 0]

    loss = _textbook_a2c_loss(
        chunked_forward,
        episodes,
        gamma=gamma,
        lambda_=1.0,
        vf_coeff=vf_coeff,
        ent_coeff=ent_coeff,
        bootstrap=True,
    )
    loss.backward()
    for (name, p), (_, p_ref) in zip(module.named_parameters(), reference.named_parameters()):
        torch.testing.assert_close(p.grad, p_ref.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_grad_clip_applies_global_norm() -> None:
    config = (
        A2CConfig()
        .environment(observation_space=OBS_SPACE, action_space=ACT_SPACE)
        .training(grad_clip=1e-3, lr=1e-3)
        .rl_module(model_config={"fcnet_hiddens": [8]})
    )
    learner = config.build_learner()
    learner.update(episodes=[_to_rllib_episode(ep) for ep in _hand_made_episodes(1)])
    grads = [p.grad for p in learner.module[DEFAULT_MODULE_ID].parameters()]
    total_norm = torch.sqrt(sum((g**2).sum() for g in grads))
    assert total_norm == pytest.approx(1e-3, rel=1e-3)


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"vf_loss_coeff": -0.1}, "vf_loss_coeff"),
        ({"entropy_coeff": -0.01}, "entropy_coeff"),
        ({"entropy_coeff": [[0, 0.01], [100, -1.0]]}, "entropy_coeff"),
        ({"lambda_": 1.5}, "lambda_"),
        ({"lambda_": -0.1}, "lambda_"),
        ({"gamma": 1.2}, "gamma"),
        ({"lr": 0.0}, "lr"),
        ({"lr": [[10, 1e-3], [100, 1e-11]]}, "lr"),
        ({"grad_clip": -1.0}, "grad_clip"),
        ({"num_epochs": 4}, "num_epochs"),
        ({"minibatch_size": 32}, "minibatch_size"),
        ({"use_critic": False, "lambda_": 0.9}, "lambda_"),
        # NaN and infinity would train to NaN weights without a word.
        ({"lr": float("nan")}, "lr"),
        ({"lr": [[0, 1e-3], [100, float("inf")]]}, "lr"),
        ({"entropy_coeff": float("inf")}, "entropy_coeff"),
        ({"vf_loss_coeff": float("nan")}, "vf_loss_coeff"),
        ({"grad_clip": float("inf")}, "grad_clip"),
    ],
)
def test_bad_config_raises_one_line_error(kwargs: dict, needle: str) -> None:
    config = A2CConfig().environment("CartPole-v1").training(**kwargs)
    with pytest.raises(ValueError, match=needle) as info:
        config.validate()
    assert "\n" not in str(info.value)


def test_good_config_validates_and_tune_knows_a2c() -> None:
    from ray.tune.registry import get_trainable_cls

    A2CConfig().environment("CartPole-v1").training(
        lr=[[0, 7e-4], [200_000_000, 1e-11]],
        entropy_coeff=[[0, 0.01], [1000, 0.0]],
        lambda_=0.0,
        bootstrap_truncated=False,
    ).env_runners(batch_mode="complete_episodes").validate()
    assert get_trainable_cls("A2C") is A2C


def _cartpole_config(seed: int) -> A2CConfig:
    return (
        A2CConfig()
        .environment("CartPole-v1")
        .env_runners(num_env_runners=0, num_envs_per_env_runner=16, rollout_fragment_length=10)
        .training(
            lr=2e-3,
            gamma=0.99,
            vf_loss_coeff=0.5,
            entropy_coeff=0.01,
            grad_clip=40.0,
            standardize_advantages=True,
        )
        .rl_module(model_config={"fcnet_hiddens": [64, 64]})
        .evaluation(
            evaluation_interval=None,
            evaluation_num_env_runners=0,
            evaluation_duration=10,
            evaluation_duration_unit="episodes",
            evaluation_config={"explore": True},
        )
        .debugging(seed=seed)
    )


def test_a2c_learns_cartpole(ray_session) -> None:
    # Seeds 0-3 reached >= 150 within 60-70 iterations (about 12k env steps).
    algo = _cartpole_config(seed=0).build_algo()
    try:
        returns = []
        for iteration in range(1, 301):
            algo.train()
            if iteration % 5 == 0:
                # 10 fresh episodes with the stochastic (exploring) policy.
                returns.append(algo.evaluate()["env_runners"]["episode_return_mean"])
                if returns[-1] >= 150:
                    break
        assert returns[-1] >= 150, returns
    finally:
        algo.stop()


def _train_recurrent(spec, env: str, iterations: int, num_learners: int = 0) -> list[dict]:
    config = (
        A2CConfig()
        .environment(env)
        .env_runners(num_env_runners=0, num_envs_per_env_runner=4, rollout_fragment_length=24)
        .learners(num_learners=num_learners)
        .training(lr=[[0, 1e-3], [2000, 1e-4]], entropy_coeff=0.01, grad_clip=4.0)
        .rl_module(rl_module_spec=spec)
        .debugging(seed=0)
    )
    algo = config.build_algo()
    try:
        module = algo.get_module()
        before = {k: v.detach().clone() for k, v in module.state_dict().items()}
        results = [algo.train() for _ in range(iterations)]
        after = algo.get_module().state_dict()
        assert any(not torch.equal(before[k], after[k]) for k in before)
    finally:
        algo.stop()
    return results


def _check_recurrent_results(results: list[dict]) -> None:
    for r in results:
        learner = r["learners"][DEFAULT_MODULE_ID]
        for key in ("policy_loss", "vf_loss", "entropy", "total_loss"):
            assert np.isfinite(learner[key]), (key, learner[key])
        assert r["env_runners"]["num_env_steps_sampled"] >= 4 * 24
    # The lr schedule (RLlib list form) is followed: 4*24 steps per iteration.
    lrs = [r["learners"][DEFAULT_MODULE_ID]["default_optimizer_learning_rate"] for r in results]
    assert lrs[0] == pytest.approx(1e-3, rel=0.05)
    assert lrs[-1] < lrs[0]


def test_a2c_trains_lstm_with_remote_learner(ray_session) -> None:
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec
    from ray.rllib.examples.envs.classes.stateless_cartpole import StatelessCartPole
    from ray.rllib.examples.rl_modules.classes.lstm_containing_rlm import (
        LSTMContainingRLModule,
    )

    spec = RLModuleSpec(
        module_class=LSTMContainingRLModule,
        # max_seq_len < rollout length: BPTT runs over chunks of 8 steps.
        model_config={"lstm_cell_size": 16, "dense_layers": [16], "max_seq_len": 8},
    )
    results = _train_recurrent(spec, StatelessCartPole, iterations=4, num_learners=1)
    _check_recurrent_results(results)


def test_a2c_trains_stpn_model_on_maze(ray_session) -> None:
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    from rllib_stpn.rl_module import STPNModel

    spec = RLModuleSpec(
        module_class=STPNModel,
        model_config={"core": "stpn", "hidden_size": 16, "max_seq_len": 8},
    )
    results = _train_recurrent(spec, "stpn/Maze-v0", iterations=4)
    _check_recurrent_results(results)


class _RLlibLayoutA2CConfig(A2CConfig):
    """A2C whose learner uses RLlib's own rows (the layout before A2C's bootstrap rows)."""

    def build_learner_connector(self, input_observation_space, input_action_space, device=None):
        from ray.rllib.algorithms.algorithm_config import AlgorithmConfig
        from ray.rllib.connectors.learner import AddOneTsToEpisodesAndTruncate

        pipeline = AlgorithmConfig.build_learner_connector(
            self, input_observation_space, input_action_space, device
        )
        pipeline.prepend(AddOneTsToEpisodesAndTruncate())
        return pipeline


@pytest.mark.parametrize("rollout", [8, 6])
def test_bootstrap_rows_give_rllib_layout_loss_and_gradients(rollout):
    """A2C's rows (bootstrap step in the last row, padding skipped by the STPN and encoder)
    give the loss and the gradients of RLlib's layout, on the same sampled episodes."""
    import pickle

    from ray.rllib.core.rl_module.rl_module import RLModuleSpec
    from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner

    from rllib_stpn import STPNModel

    spec = RLModuleSpec(
        module_class=STPNModel,
        model_config={
            "core": "stpn",
            "hidden_size": 6,
            "max_seq_len": 4,
            "encoder": "mlp",
            "encoder_hiddens": [5],
            "compact_states": False,  # RLlib's own state builder needs every step's state
        },
    )
    results = []
    for config_class in (A2CConfig, _RLlibLayoutA2CConfig):
        config = (
            config_class()
            .environment("CartPole-v1")
            .env_runners(num_envs_per_env_runner=1, rollout_fragment_length=rollout)
            .training(lr=1e-3, grad_clip=None)
            .rl_module(rl_module_spec=spec)
            .debugging(seed=5)
        )
        torch.manual_seed(5)
        runner = SingleAgentEnvRunner(config=config)
        # Several rollouts: chunks that continue an episode, chunks that end one.
        episodes = [ep for _ in range(4) for ep in runner.sample(explore=True)]
        learner = config.build_learner(env=runner.env)
        learner.module[DEFAULT_MODULE_ID].set_state(runner.module.get_state())
        batch = learner._learner_connector(
            rl_module=learner.module,
            batch={},
            episodes=pickle.loads(pickle.dumps(episodes)),
            shared_data={},
        )[DEFAULT_MODULE_ID]
        module = learner.module[DEFAULT_MODULE_ID]
        loss = learner.compute_loss_for_module(
            module_id=DEFAULT_MODULE_ID,
            config=learner.config.get_config_for_module(DEFAULT_MODULE_ID),
            batch=batch,
            fwd_out=module.forward_train(batch),
        )
        loss.backward()
        rows = batch[Columns.OBS].shape[:2]
        results.append((loss.detach(), [p.grad.clone() for p in module.parameters()], rows))
    (loss_ours, grads_ours, rows_ours), (loss_rllib, grads_rllib, rows_rllib) = results
    assert rows_ours[1] == 5 and rows_rllib[1] == 4  # max_seq_len + 1 vs max_seq_len slots
    # A chunk of a multiple of max_seq_len steps needs no row for its bootstrap step alone.
    assert rows_ours[0] < rows_rllib[0] if rollout % 4 == 0 else rows_ours[0] <= rows_rllib[0]
    torch.testing.assert_close(loss_ours, loss_rllib, rtol=1e-5, atol=1e-6)
    for ours, theirs in zip(grads_ours, grads_rllib):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)


def _loop_value_targets(v, r, term, trunc, gamma, lambda_, bootstrap_truncated):
    """GAE targets written as the textbook loop, one step at a time, in float64."""
    targets, running = np.zeros(len(v)), 0.0
    for t in reversed(range(len(v))):
        ends = term[t] or trunc[t]  # no advantage flows back across a chunk's end
        stops = term[t] or (trunc[t] and not bootstrap_truncated)  # no V(s_{t+1}) then
        next_v = 0.0 if stops or t + 1 == len(v) else v[t + 1]
        running = r[t] + gamma * next_v - v[t] + (0.0 if ends else gamma * lambda_ * running)
        targets[t] = running + v[t]
    return targets


@pytest.mark.parametrize("bootstrap_truncated", [True, False])
@pytest.mark.parametrize("lambda_", [0.0, 0.7, 1.0])
def test_value_targets_equal_the_textbook_loop(lambda_, bootstrap_truncated) -> None:
    """RLlib's compute_value_targets plus A2C's bootstrap_truncated step, against a loop."""
    from rllib_stpn.algorithms.a2c_learner import compute_a2c_value_targets

    rng = np.random.default_rng(3)
    n = 400
    v, r = rng.normal(0, 5, n), rng.normal(0, 1, n)
    term = (rng.random(n) < 0.05).astype(np.float64)
    trunc = (rng.random(n) < 0.1) * (1 - term)
    got = compute_a2c_value_targets(
        v, r, term, trunc, gamma=0.9, lambda_=lambda_, bootstrap_truncated=bootstrap_truncated
    )
    want = _loop_value_targets(v, r, term, trunc, 0.9, lambda_, bootstrap_truncated)
    assert got.dtype == np.float32
    # RLlib rounds the advantage to float32 before adding V: one or two float32 roundings.
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)
    # Monte-Carlo: a truncated 3-step chunk, no bootstrap, gives the discounted reward sum.
    mc = compute_a2c_value_targets(
        np.array([1.0, 2.0, 3.0, 50.0]),  # the last one: V of the phantom step, never used
        np.array([1.0, 0.0, 2.0, 0.0]),
        np.zeros(4),
        np.array([0.0, 0.0, 1.0, 0.0]),
        gamma=0.5,
        lambda_=1.0,
        bootstrap_truncated=False,
    )
    np.testing.assert_allclose(mc[:3], [1.5, 1.0, 2.0])


# --- several learners ------------------------------------------------------------------------


def test_shards_are_whole_episodes_balanced_by_steps() -> None:
    from rllib_stpn.algorithms.a2c import shard_whole_episodes

    episodes = [list(range(n)) for n in (5, 1, 3, 2, 3)]  # anything with a length
    shards = shard_whole_episodes(episodes, 2)
    assert sorted(sum(map(len, s)) for s in shards) == [7, 7]
    assert sorted(len(e) for s in shards for e in s) == [1, 2, 3, 3, 5]  # none cut, none lost
    assert [len(s) for s in shard_whole_episodes(episodes[:3], 3)] == [1, 1, 1]
    with pytest.raises(ValueError, match="2 episode chunks for 3 learners"):
        shard_whole_episodes(episodes[:2], 3)
    with pytest.raises(ValueError, match="at least as many envs"):
        A2CConfig().environment("CartPole-v1").env_runners(num_envs_per_env_runner=1).learners(
            num_learners=2
        ).validate()


def _learner_weights(algo) -> list[dict[str, np.ndarray]]:
    """The module weights held by every learner of ``algo``."""

    def weights(learner) -> dict[str, np.ndarray]:
        module = learner.module[DEFAULT_MODULE_ID].unwrapped()
        return {k: v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()}

    if algo.learner_group.is_local:
        return [weights(algo.learner_group._learner)]
    return [r.get() for r in algo.learner_group.foreach_learner(weights)]


@pytest.mark.parametrize("core", ["stpn", "lstm"])
def test_two_learners_take_the_single_learner_step(ray_session, core: str) -> None:
    """num_learners=2 (CPU, DDP) gives the weights of one learner on the whole batch."""
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    from rllib_stpn.rl_module import STPNModel

    def config(num_learners: int) -> A2CConfig:
        # 4 mazes x one 10-step episode: two shards of 20 steps, so the mean of the two
        # learners' gradients is the gradient of the whole batch.
        return (
            A2CConfig()
            .environment("stpn/Maze-v0", env_config={"size": 5, "episode_length": 10})
            .env_runners(
                num_env_runners=0, num_envs_per_env_runner=4, batch_mode="complete_episodes"
            )
            .learners(num_learners=num_learners, num_cpus_per_learner=1)
            .training(lr=1e-2, gamma=0.9, bootstrap_truncated=False, grad_clip=None)
            .rl_module(
                rl_module_spec=RLModuleSpec(
                    module_class=STPNModel,
                    # max_seq_len 4 < 10 steps: BPTT chunks start from stored states.
                    model_config={"core": core, "hidden_size": 8, "max_seq_len": 4},
                )
            )
            .debugging(seed=0)
        )

    two, one = config(2).build_algo(), config(0).build_algo()
    try:
        start = _learner_weights(two)
        for name in start[0]:
            np.testing.assert_array_equal(start[0][name], start[1][name], err_msg=name)
        one.learner_group.set_weights(two.learner_group.get_weights())
        episodes = two.env_runner.sample()
        assert len(episodes) == 4 and all(len(e) == 10 for e in episodes)
        timesteps = {"num_env_steps_sampled_lifetime": 40}
        one._update_learners(copy.deepcopy(episodes), timesteps)
        two._update_learners(episodes, timesteps)
        (single,) = _learner_weights(one)
        changed = 0
        for learner in _learner_weights(two):
            for name, value in single.items():
                np.testing.assert_allclose(learner[name], value, rtol=1e-5, atol=1e-6)
                changed += int(not np.array_equal(value, start[0][name]))
        assert changed >= 4, "the step moved (almost) nothing"

        # And through A2C.train(), as a user runs it: both learners keep equal weights.
        result = two.train()
        assert np.isfinite(result["learners"][DEFAULT_MODULE_ID]["total_loss"])
        a, b = _learner_weights(two)
        for name in a:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    finally:
        two.stop()
        one.stop()
