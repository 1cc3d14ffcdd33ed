"""Compact synaptic-state storage gives the learner exactly RLlib's default STATE_IN."""

from __future__ import annotations

import numpy as np
import torch
from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner

from rllib_stpn.rl_module import STPNModel
from rllib_stpn.state_storage import (
    AddSynapticStatesToBatch,
    MoveSynapticStateToEpisode,
    uses_compact_states,
)

MAX_SEQ_LEN = 4


def make_config(core: str = "stpn") -> PPOConfig:
    return (
        PPOConfig()
        .environment("CartPole-v1")
        .env_runners(num_env_runners=0, num_envs_per_env_runner=2, rollout_fragment_length=7)
        .rl_module(
            rl_module_spec=RLModuleSpec(
                module_class=STPNModel,
                model_config={"core": core, "hidden_size": 8, "max_seq_len": MAX_SEQ_LEN},
            )
        )
        .debugging(seed=3)
    )


def sample_and_learner_batch(monkeypatch, compact: bool, num_samples: int = 3):
    """Episodes from `num_samples` rollouts and the learner connector's batch for the last one."""
    monkeypatch.setenv("RLLIB_STPN_COMPACT_STATES", "1" if compact else "0")
    config = make_config()
    torch.manual_seed(0)
    runner = SingleAgentEnvRunner(config=config)
    learner_connector = config.build_learner_connector(
        runner.env.single_observation_space, runner.env.single_action_space
    )
    learner_connector.remove("NumpyToTensor")  # compare the numpy batches
    batches, all_episodes = [], []
    for _ in range(num_samples):
        episodes = runner.sample(explore=False)
        all_episodes.append(episodes)
        module = runner.module
        batch = learner_connector(rl_module=module, batch={}, episodes=episodes, shared_data={})
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


def test_episodes_store_no_per_step_synaptic_state(monkeypatch):
    _, episodes, _ = sample_and_learner_batch(monkeypatch, compact=True, num_samples=1)
    for ep in episodes[0]:
        state_outs = ep.get_extra_model_outputs(key=Columns.STATE_OUT)
        assert set(state_outs) == {"h"}
        kept = ep.custom_data["stpn_F_kept"]
        assert all((i + 1) % MAX_SEQ_LEN == 0 for i in kept)


def test_state_in_equals_rllib_default_path(monkeypatch):
    """Same seeds, greedy actions: identical STATE_IN, across rollout boundaries too."""
    _, eps_default, batches_default = sample_and_learner_batch(monkeypatch, compact=False)
    _, eps_compact, batches_compact = sample_and_learner_batch(monkeypatch, compact=True)
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
            row += -(-len(ep) // MAX_SEQ_LEN)
        assert row == len(sc["F"])
    assert boundary_rows > 0
