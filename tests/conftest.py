"""Shared fixtures. One local Ray instance serves every test that needs one."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")


@pytest.fixture(scope="session")
def ray_session():
    """A 2-CPU local Ray instance (the size of the CI machine), shut down at the end."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a test module (`pytestmark = usefixtures("one_torch_thread")`).

    On a shared 2-core machine torch's intra-op threads spin against each other: a B=8
    single-step forward goes from <1 ms to ~50 ms. Tests that run models in-process use this.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
