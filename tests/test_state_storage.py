"""Compact synaptic-state storage gives the learner exactly RLlib's default STATE_IN."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.connectors.learner import AddOneTsToEpisodesAndTruncate
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner

from rllib_stpn.rl_module import STPNModel
from rllib_stpn.state_storage import (
    STATES_KEY,
    AddSynapticStatesToBatch,
    MoveSynapticStateToEpisode,
    uses_compact_states,
)

MAX_SEQ_LEN = 4


def make_config(core: str = "stpn", rollout: int = 7) -> PPOConfig:
    return (
        PPOConfig()
        .environment("CartPole-v1")
        .env_runners(num_env_runners=0, num_envs_per_env_runner=2, rollout_fragment_length=rollout)
        .rl_module(
            rl_module_spec=RLModuleSpec(
                module_class=STPNModel,
                model_config={"core": core, "hidden_size": 8, "max_seq_len": MAX_SEQ_LEN},
            )
        )
        .debugging(seed=3)
    )


def sample_and_learner_batch(
    monkeypatch, compact: bool, num_samples: int = 3, rollout: int = 7, ship: bool = True
):
    """Episodes from `num_samples` rollouts and the learner connector's batch for each.

    With `ship`, the episodes reach the learner connector pickled, as Ray ships them from a
    remote env runner (so the runner may release their F later); without, by reference. The
    returned episodes are the env runner's own objects.
    """
    monkeypatch.setenv("RLLIB_STPN_COMPACT_STATES", "1" if compact else "0")
    config = make_config(rollout=rollout)
    torch.manual_seed(0)
    runner = SingleAgentEnvRunner(config=config)
    learner_connector = config.build_learner_connector(
        runner.env.single_observation_space, runner.env.single_action_space
    )
    learner_connector.remove("NumpyToTensor")  # compare the numpy batches
    # PPO's and A2C's learners add one artificial step per chunk (for the value bootstrap).
    learner_connector.prepend(AddOneTsToEpisodesAndTruncate())
    batches, all_episodes = [], []
    for _ in range(num_samples):
        episodes = runner.sample(explore=False)
        all_episodes.append(episodes)
        shipped = pickle.loads(pickle.dumps(episodes))
        batch = learner_connector(
            rl_module=runner.module, batch={}, episodes=shipped, shared_data={}
        )
        batches.append(batch)
    return runner, all_episodes, batches


def test_pipelines_are_swapped_only_for_stpn_cores(monkeypatch):
    monkeypatch.delenv("RLLIB_STPN_COMPACT_STATES", raising=False)
    assert uses_compact_states(make_config("stpn"))
    assert uses_compact_states(make_config("stpnf"))
    assert not uses_compact_states(make_config("lstm"))
    assert not uses_compact_states(PPOConfig().environment("CartPole-v1"))
    runner = SingleAgentEnvRunner(config=make_config())
    assert any(isinstance(c, AddSynapticStatesToBatch) for c in runner._env_to_module.connectors)
    assert any(isinstance(c, MoveSynapticStateToEpisode) for c in runner._module_to_env.connectors)


@pytest.mark.parametrize("rollout", [7, 2 * MAX_SEQ_LEN])
def test_chunks_keep_one_synaptic_state_per_sequence(monkeypatch, rollout):
    """No per-step F; a chunk holds one F per training sequence, none kept twice in memory."""
    monkeypatch.delenv("RLLIB_STPN_COMPACT_STATES", raising=False)
    runner = SingleAgentEnvRunner(config=make_config(rollout=rollout))
    episodes = [runner.sample(explore=False) for _ in range(3)]  # never pickled: none released
    F_size = np.asarray(runner.module.get_initial_state()["F"]).size
    last_kept = {}  # episode id -> (chunk end, F kept at the chunk's last step)
    for ep in [ep for eps in episodes for ep in eps]:
        assert set(ep.get_extra_model_outputs(key=Columns.STATE_OUT)) == {"h"}
        states = ep.custom_data[STATES_KEY]
        assert sorted(states.kept) == list(range(MAX_SEQ_LEN - 1, len(ep), MAX_SEQ_LEN))
        starts = [states.lookback] if ep.t_started > 0 else []
        starts += list(states.kept.values())
        # The learner's sequences over the chunk plus its one artificial step, less the zero
        # initial state at an episode's start.
        assert len(starts) == -(-(len(ep) + 1) // MAX_SEQ_LEN) - (ep.t_started == 0)
        assert all(f.shape == (F_size,) and f.base is None for f in starts)  # no batch pinned
        end, f = last_kept.get(ep.id_, (None, None))
        if end == ep.t_started and f is not None:
            assert states.lookback is f  # the previous chunk's last kept F, shared
        last_kept[ep.id_] = (ep.t, states.kept.get(len(ep) - 1))
        shipped = pickle.loads(pickle.dumps(ep))
        assert shipped.custom_data[STATES_KEY].current.F is None  # the live F stays here


@pytest.mark.parametrize("rollout,ship", [(7, True), (2 * MAX_SEQ_LEN, True), (7, False)])
def test_state_in_equals_rllib_default_path(monkeypatch, rollout, ship):
    """Same seeds, greedy actions: identical STATE_IN, across rollout boundaries too."""
    _, eps_default, batches_default = sample_and_learner_batch(
        monkeypatch, compact=False, rollout=rollout
    )
    _, eps_compact, batches_compact = sample_and_learner_batch(
        monkeypatch, compact=True, rollout=rollout, ship=ship
    )
    for ed, ec in zip(eps_default, eps_compact):
        for a, b in zip(ed, ec):
            np.testing.assert_array_equal(a.get_actions(), b.get_actions())
    boundary_rows = 0
    for bd, bc, eps in zip(batches_default, batches_compact, eps_compact):
        sd, sc = bd[Columns.STATE_IN], bc[Columns.STATE_IN]
        assert set(sd) == set(sc) == {"h", "F"}
        for key in sd:
            np.testing.assert_array_equal(np.asarray(sd[key]), np.asarray(sc[key]))
        # The first sequence of a chunk that continues an episode across a rollout boundary
        # starts from the previous chunk's last state, which is not the zero initial state.
        row = 0
        for ep in eps:
            if ep.t_started > 0:
                assert np.abs(np.asarray(sc["F"])[row]).sum() > 0
                boundary_rows += 1
            row += -(-(len(ep) + 1) // MAX_SEQ_LEN)  # with the artificial step
        assert row == len(sc["F"])
    assert boundary_rows > 0


def test_shipped_chunks_release_their_synaptic_states(monkeypatch):
    """A chunk pickled for the learner drops its F here once its episode moves on; fed to a
    learner afterwards, it gives a clear error instead of training from wrong states."""
    runner, episodes, _ = sample_and_learner_batch(monkeypatch, compact=True, num_samples=2)
    continued = {ep.id_ for ep in episodes[1] if ep.t_started > 0}
    released = [ep for ep in episodes[0] if ep.id_ in continued]
    assert released
    for ep in released:
        states = ep.custom_data[STATES_KEY]
        assert states.released and states.lookback is None and states.kept == {}
    learner_connector = make_config().build_learner_connector(
        runner.env.single_observation_space, runner.env.single_action_space
    )
    with pytest.raises(RuntimeError, match="released after the chunk had been shipped"):
        learner_connector(rl_module=runner.module, batch={}, episodes=released, shared_data={})


def test_remote_env_runner_releases_returned_chunks(monkeypatch, ray_session):
    monkeypatch.delenv("RLLIB_STPN_COMPACT_STATES", raising=False)
    runner = ray_session.remote(SingleAgentEnvRunner).remote(config=make_config())
    first = ray_session.get(runner.sample.remote(explore=False))
    ray_session.get(runner.sample.remote(explore=False))

    def held_chunks(r):  # the chunks RLlib keeps for episode metrics
        return [
            ep.custom_data[STATES_KEY].released
            for chunks in r._ongoing_episodes_for_metrics.values()
            for ep in chunks
        ]

    held = ray_session.get(runner.apply.remote(held_chunks))
    # First-sample chunks whose episode went on released their F in the runner; the latest
    # chunks (whose episodes have not stepped since) still hold theirs ...
    assert any(held) and not all(held)
    # ... and the copies that reached this process are whole.
    assert not any(ep.custom_data[STATES_KEY].released for ep in first)


def test_ppo_in_a_ray_actor_with_several_samples_per_iteration(monkeypatch, ray_session):
    """A Tune trial runs its local env runner inside a Ray actor and PPO samples several
    times per iteration there; episodes reach the local learner by reference, whole."""
    monkeypatch.delenv("RLLIB_STPN_COMPACT_STATES", raising=False)
    config = make_config().training(train_batch_size_per_learner=42, minibatch_size=14)

    @ray_session.remote
    class Trial:
        def train(self, config) -> list[float]:
            algo = config.build_algo()
            try:
                return [algo.train()["learners"]["default_policy"]["total_loss"] for _ in range(2)]
            finally:
                algo.stop()

    losses = ray_session.get(Trial.remote().train.remote(config))
    assert len(losses) == 2 and all(np.isfinite(loss) for loss in losses)
