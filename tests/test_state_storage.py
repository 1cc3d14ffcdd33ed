"""Compact synaptic-state storage gives the learner exactly RLlib's default STATE_IN."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from ray.rllib.algorithms.algorithm_config import AlgorithmConfig
from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.connectors.learner import AddOneTsToEpisodesAndTruncate
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner

import rllib_stpn
from rllib_stpn import A2CConfig, compact_states
from rllib_stpn.rl_module import STPNModel
from rllib_stpn.state_storage import (
    STATES_KEY,
    AddSynapticStatesToBatch,
    MoveSynapticStateToEpisode,
)

MAX_SEQ_LEN = 4


def make_config(
    core: str = "stpn",
    rollout: int = 7,
    *,
    algo: str = "ppo",
    compact: bool = True,
    max_seq_len: int = MAX_SEQ_LEN,
    value_branch: str = "shared",
) -> AlgorithmConfig:
    """PPO with `compact_states(config)`, or A2C (which stores states compactly by itself);
    `compact=False` switches the storage off through the module's own model_config."""
    config = A2CConfig() if algo == "a2c" else PPOConfig()
    config = (
        config.environment("CartPole-v1")
        .env_runners(num_env_runners=0, num_envs_per_env_runner=2, rollout_fragment_length=rollout)
        .rl_module(
            rl_module_spec=RLModuleSpec(
                module_class=STPNModel,
                model_config={
                    "core": core,
                    "hidden_size": 8,
                    "max_seq_len": max_seq_len,
                    "compact_states": compact,
                    "value_branch": value_branch,
                },
            )
        )
        .debugging(seed=3)
    )
    return compact_states(config) if algo == "ppo" else config


def sample_and_learner_batch(
    compact: bool,
    num_samples: int = 3,
    rollout: int = 7,
    ship: bool = True,
    algo: str = "ppo",
    core: str = "stpn",
    value_branch: str = "shared",
):
    """Episodes from `num_samples` rollouts and the learner connector's batch for each.

    With `ship`, the episodes reach the learner connector pickled, as Ray ships them from a
    remote env runner (so the runner may release their F later); without, by reference. The
    returned episodes are the env runner's own objects.
    """
    config = make_config(
        core, rollout=rollout, algo=algo, compact=compact, value_branch=value_branch
    )
    torch.manual_seed(0)
    runner = SingleAgentEnvRunner(config=config)
    learner_connector = config.build_learner_connector(
        runner.env.single_observation_space, runner.env.single_action_space
    )
    learner_connector.remove("NumpyToTensor")  # compare the numpy batches
    if algo == "ppo":  # PPO's learner adds one artificial step per chunk (A2C's config does)
        learner_connector.prepend(AddOneTsToEpisodesAndTruncate())
    batches, all_episodes = [], []
    for _ in range(num_samples):
        episodes = runner.sample(explore=False)
        for ep in episodes:  # before a learner connector extends the episodes by reference
            ep.custom_data["sampled_actions"] = np.array(ep.get_actions())
        all_episodes.append(episodes)
        shipped = pickle.loads(pickle.dumps(episodes)) if ship else episodes
        batch = learner_connector(
            rl_module=runner.module, batch={}, episodes=shipped, shared_data={}
        )
        batches.append(batch)
    return runner, all_episodes, batches


def test_import_changes_nothing_in_rllib():
    """`import rllib_stpn` leaves RLlib's classes alone: PPO gets RLlib's pipelines unless the
    config opts in."""
    assert rllib_stpn.compact_states is compact_states
    for name in (
        "build_env_to_module_connector",
        "build_module_to_env_connector",
        "build_learner_connector",
    ):
        assert getattr(AlgorithmConfig, name).__module__.startswith("ray.rllib")
        assert getattr(PPOConfig, name).__module__.startswith("ray.rllib")
    plain = make_config()
    plain._env_to_module_connector = plain._module_to_env_connector = None
    plain._learner_connector = None
    runner = SingleAgentEnvRunner(config=plain)
    pieces = runner._env_to_module.connectors + runner._module_to_env.connectors
    assert not any(
        isinstance(c, AddSynapticStatesToBatch | MoveSynapticStateToEpisode) for c in pieces
    )


@pytest.mark.parametrize(
    "algo,opt_in,key,compact",
    [
        ("ppo", False, None, False),  # a PPOConfig built in Python: RLlib's path, the key idle
        ("ppo", True, None, True),  # after compact_states(config): the default True acts
        ("ppo", True, False, False),
        ("a2c", False, None, True),  # A2C installs the pieces itself
        ("a2c", False, False, False),
    ],
)
def test_compact_states_key_acts_exactly_where_documented(algo, opt_in, key, compact):
    """model_config["compact_states"] (default True) chooses between the two paths only where
    rllib_stpn's pieces are in the pipelines (A2C, or after compact_states(config))."""
    model_config = {"hidden_size": 8, "max_seq_len": MAX_SEQ_LEN}
    if key is not None:
        model_config["compact_states"] = key
    config = (
        (A2CConfig() if algo == "a2c" else PPOConfig())
        .environment("CartPole-v1")
        .env_runners(num_env_runners=0, num_envs_per_env_runner=2, rollout_fragment_length=7)
        .rl_module(rl_module_spec=RLModuleSpec(module_class=STPNModel, model_config=model_config))
    )
    if opt_in:
        compact_states(config)
    episodes = SingleAgentEnvRunner(config=config).sample(explore=False)
    for ep in episodes:
        per_step = ep.get_extra_model_outputs(key=Columns.STATE_OUT)
        assert set(per_step) == ({"h"} if compact else {"h", "F"})
        assert (STATES_KEY in ep.custom_data) == compact


@pytest.mark.parametrize("algo", ["ppo", "a2c"])
def test_pipelines_hold_the_compact_pieces(algo):
    runner = SingleAgentEnvRunner(config=make_config(algo=algo))
    assert any(isinstance(c, AddSynapticStatesToBatch) for c in runner._env_to_module.connectors)
    assert any(isinstance(c, MoveSynapticStateToEpisode) for c in runner._module_to_env.connectors)


def test_opt_in_survives_tune_config_dict_round_trip():
    """Tune hands the algorithm `config.to_dict()`: the opt-in travels inside it."""
    config = make_config()
    rebuilt = PPOConfig().update_from_dict(pickle.loads(pickle.dumps(config.to_dict())))
    runner = SingleAgentEnvRunner(config=rebuilt)
    episodes = runner.sample(explore=False)
    assert all(STATES_KEY in ep.custom_data for ep in episodes)
    assert all(set(ep.get_extra_model_outputs(key=Columns.STATE_OUT)) == {"h"} for ep in episodes)
    assert compact_states(config) is config  # idempotent


@pytest.mark.parametrize("algo", ["ppo", "a2c"])
@pytest.mark.parametrize("rollout", [7, 2 * MAX_SEQ_LEN])
def test_chunks_keep_one_synaptic_state_per_sequence(rollout, algo):
    """No per-step F; a chunk holds one F per training sequence, none kept twice in memory."""
    runner = SingleAgentEnvRunner(config=make_config(rollout=rollout, algo=algo))
    episodes = [runner.sample(explore=False) for _ in range(3)]  # never pickled: none released
    F_size = np.asarray(runner.module.get_initial_state()["F"]).size
    last_kept = {}  # episode id -> (chunk end, state kept at the chunk's last step)
    for ep in [ep for eps in episodes for ep in eps]:
        assert set(ep.get_extra_model_outputs(key=Columns.STATE_OUT)) == {"h"}
        states = ep.custom_data[STATES_KEY]
        assert sorted(states.kept) == list(range(MAX_SEQ_LEN - 1, len(ep), MAX_SEQ_LEN))
        starts = [states.lookback] if ep.t_started > 0 else []
        starts += list(states.kept.values())
        assert len(starts) == len(ep) // MAX_SEQ_LEN + (ep.t_started > 0)
        # No batch pinned by a kept row.
        assert all(s["F"].shape == (F_size,) and s["F"].base is None for s in starts)
        end, kept = last_kept.get(ep.id_, (None, None))
        if end == ep.t_started and kept is not None:
            assert states.lookback["F"] is kept["F"]  # the previous chunk's last kept F, shared
        last_kept[ep.id_] = (ep.t, states.kept.get(len(ep) - 1))
        shipped = pickle.loads(pickle.dumps(ep)).custom_data[STATES_KEY]
        assert shipped.current.state is None  # the live F stays here
        # A2C's rows never start after a chunk's last step: the state kept there stays with
        # the runner (as the continuation's lookback) and is not shipped.
        last = len(ep) - 1
        assert (last in shipped.kept) == (algo == "ppo" and last in states.kept)


@pytest.mark.parametrize(
    "algo,rollout,ship,core",
    [
        ("ppo", 7, True, "stpn"),
        ("ppo", 2 * MAX_SEQ_LEN, True, "stpn"),
        ("ppo", 7, False, "stpn"),
        ("a2c", 7, True, "stpn"),
        ("a2c", 2 * MAX_SEQ_LEN, True, "stpn"),
        ("a2c", 7, True, "fastweights"),
        ("ppo", 7, True, "hebbff"),  # its whole state is compact: STATE_OUT keeps nothing
    ],
)
def test_state_in_equals_rllib_default_path(rollout, ship, algo, core):
    """Same seeds, greedy actions: identical STATE_IN with and without compact storage,
    across rollout boundaries too (for A2C, in A2C's own row layout)."""
    _, eps_default, batches_default = sample_and_learner_batch(
        compact=False, rollout=rollout, algo=algo, core=core
    )
    _, eps_compact, batches_compact = sample_and_learner_batch(
        compact=True, rollout=rollout, ship=ship, algo=algo, core=core
    )
    for ed, ec in zip(eps_default, eps_compact):
        assert all(STATES_KEY not in ep.custom_data for ep in ed)  # the default path really ran
        for a, b in zip(ed, ec):
            np.testing.assert_array_equal(
                a.custom_data["sampled_actions"], b.custom_data["sampled_actions"]
            )
    boundary_rows = 0
    for bd, bc, eps in zip(batches_default, batches_compact, eps_compact):
        sd, sc = bd[Columns.STATE_IN], bc[Columns.STATE_IN]
        big = {"stpn": "F", "fastweights": "A", "hebbff": "A"}[core]
        assert set(sd) == set(sc) and big in sc
        for key in sd:
            np.testing.assert_array_equal(np.asarray(sd[key]), np.asarray(sc[key]))
        # The first sequence of a chunk that continues an episode across a rollout boundary
        # starts from the previous chunk's last state, which is not the zero initial state.
        row = 0
        for ep in eps:
            assert big not in ep.get_extra_model_outputs(key=Columns.STATE_OUT)
            if ep.t_started > 0:
                assert np.abs(np.asarray(sc[big])[row]).sum() > 0
                boundary_rows += 1
            steps = len(ep.custom_data["sampled_actions"])  # without the artificial step
            row += -(-(steps + 1) // MAX_SEQ_LEN) if algo == "ppo" else -(-steps // MAX_SEQ_LEN)
        assert row == len(sc[big])
    assert boundary_rows > 0


@pytest.mark.parametrize("algo", ["ppo", "a2c"])
def test_separate_value_branch_stores_both_synaptic_states_compactly(algo):
    """With `value_branch` "separate" the value core's F ("vf_F") is compact too, and the
    learner still gets RLlib's default STATE_IN for both cores."""
    _, eps_default, default = sample_and_learner_batch(False, algo=algo, value_branch="separate")
    _, eps_compact, compact = sample_and_learner_batch(True, algo=algo, value_branch="separate")
    for ep in [ep for eps in eps_compact for ep in eps]:
        assert set(ep.get_extra_model_outputs(key=Columns.STATE_OUT)) == {"h", "vf_h"}
    for bd, bc in zip(default, compact):
        assert set(bd[Columns.STATE_IN]) == set(bc[Columns.STATE_IN]) == {"h", "F", "vf_h", "vf_F"}
        for key, value in bd[Columns.STATE_IN].items():
            np.testing.assert_array_equal(np.asarray(value), np.asarray(bc[Columns.STATE_IN][key]))
    assert np.abs(np.asarray(compact[-1][Columns.STATE_IN]["vf_F"])).sum() > 0


def test_shipped_chunks_release_their_synaptic_states():
    """A chunk pickled for the learner drops its F here once its episode moves on; fed to a
    learner afterwards, it gives a clear error instead of training from wrong states."""
    runner, episodes, _ = sample_and_learner_batch(compact=True, num_samples=2)
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


def test_sampling_batches_the_live_states_without_a_copy():
    """Step after step, the F the module gets is the array its previous step returned, across
    rollouts too; a new batch is built only when an episode starts (its zero F)."""
    runner = SingleAgentEnvRunner(config=make_config(algo="a2c", rollout=10))
    seen = []
    forward = runner.module.forward_exploration

    def spy(batch, **kwargs):
        out = forward(batch, **kwargs)
        seen.append((batch[Columns.STATE_IN]["F"], out[Columns.STATE_OUT]["F"]))
        return out

    runner.module.forward_exploration = spy
    for _ in range(3):
        runner.sample(explore=True)
    shared = other = 0
    for (_, previous_out), (state_in, _) in zip(seen, seen[1:]):
        if state_in.data_ptr() == previous_out.data_ptr():
            shared += 1
        elif not (state_in.abs().sum(-1) == 0).any():
            other += 1
    assert other == 0
    assert shared > 0.7 * len(seen)


def test_remote_env_runner_releases_returned_chunks(ray_session):
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


def test_ppo_in_a_ray_actor_with_several_samples_per_iteration(ray_session):
    """A Tune trial runs its local env runner inside a Ray actor and PPO samples several
    times per iteration there; episodes reach the local learner by reference, whole."""
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


def test_learner_batches_synaptic_states_into_a_reused_buffer():
    """The learner's F rows go into one buffer per size, reused once nothing refers to it."""
    from rllib_stpn.state_storage import PLACEHOLDER, BatchTrainingSynapticStates
    from rllib_stpn.state_storage.connectors import _TRAINING_ROWS

    piece = BatchTrainingSynapticStates()
    rng = np.random.default_rng(0)

    def call(n_rows):
        rows = [{"F": rng.normal(size=(3, 4)).astype(np.float32)} for _ in range(n_rows)]
        batch = {Columns.STATE_IN: {"h": np.zeros((n_rows, 3)), PLACEHOLDER: np.zeros(n_rows)}}
        out = piece(
            rl_module=None,
            batch=batch,
            episodes=[],
            shared_data={_TRAINING_ROWS: {DEFAULT_MODULE_ID: rows}},
        )[Columns.STATE_IN]
        assert PLACEHOLDER not in out and set(out) == {"h", "F"}
        np.testing.assert_array_equal(out["F"], np.stack([r["F"] for r in rows]))
        return out["F"]

    held = call(5)
    second = call(5)
    assert not np.shares_memory(held, second)  # `held` is still referenced: a new buffer
    address = second.__array_interface__["data"][0]
    del second
    assert call(5).__array_interface__["data"][0] == address  # dropped: reused
    assert call(2).shape == (2, 3, 4)
