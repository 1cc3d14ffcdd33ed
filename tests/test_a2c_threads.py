"""A2C's torch threads: sampling and the update never overlap, so each phase may use the CPUs
the whole trial reserved (`A2CConfig.thread_counts`)."""

from __future__ import annotations

import pytest
import torch

from rllib_stpn import A2CConfig


def _config(runners: int, learners: int, **training) -> A2CConfig:
    return (
        A2CConfig()
        .environment("CartPole-v1")
        .env_runners(num_env_runners=runners, num_envs_per_env_runner=2, rollout_fragment_length=4)
        .learners(num_learners=learners)
        .training(**training)
    )


@pytest.mark.parametrize(
    "runners,learners,cpus,expected",
    [
        (1, 1, 2, (2, 2)),  # the Pong benchmark: main + runner + learner = 3, capped at 2 cores
        (1, 1, 16, (3, 3)),  # never more than the trial reserved
        (4, 1, 16, (6, 1)),  # four runners share the 6 CPUs while sampling
        (0, 0, 16, (1, 1)),  # everything in the main process: its one CPU
        (2, 0, 16, (3, 1)),  # the learner lives in the main process
    ],
)
def test_auto_threads_share_the_trials_cpus(runners, learners, cpus, expected, monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: cpus)
    assert _config(runners, learners).thread_counts() == expected


def test_fixed_and_ray_default_threads():
    assert _config(1, 1, torch_threads=3).thread_counts() == (3, 3)
    assert _config(1, 1, torch_threads=None).thread_counts() is None


@pytest.mark.parametrize("bad", [0, -1, "all", 1.5, True])
def test_bad_torch_threads_is_a_one_line_error(bad):
    with pytest.raises(ValueError, match=r"`torch_threads` must be 'auto', None or an int >= 1"):
        _config(0, 0, torch_threads=bad).validate()


def test_built_algorithm_sets_the_threads_in_each_process(ray_session):
    previous = torch.get_num_threads()
    algo = _config(1, 0, torch_threads=2).build_algo()
    try:
        remote = algo.env_runner_group.foreach_env_runner(
            lambda _runner: torch.get_num_threads(), local_env_runner=False
        )
        assert remote == [2]
        assert torch.get_num_threads() == 2  # the local learner in this process
        algo.train()  # sampling and the update still run
    finally:
        algo.stop()
        torch.set_num_threads(previous)
