"""Shared fixtures. One local Ray instance serves every test that needs one."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile

import pytest
import torch

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")


def _torch_extensions_dir() -> str:
    """The directory torch builds extensions in by default (under the real home), so that
    moving HOME below does not rebuild the STPN kernel."""
    from torch.utils.cpp_extension import get_default_build_root

    if torch.version.hip is not None:
        accelerator = "rocm" + torch.version.hip.replace(".", "")
    elif torch.version.cuda is not None:
        accelerator = "cu" + torch.version.cuda.replace(".", "")
    else:
        accelerator = "cpu"
    python = f"py{sys.version_info.major}{sys.version_info.minor}{getattr(sys, 'abiflags', '')}"
    return os.path.join(get_default_build_root(), f"{python}_{accelerator}")


# The suite leaves nothing in the user's home: an Algorithm built outside Tune makes
# ~/ray_results/<timestamp>, so HOME is a temporary directory for this process and every
# process it starts (before Ray is imported: Ray reads it once).
os.environ.setdefault("TORCH_EXTENSIONS_DIR", _torch_extensions_dir())
_HOME = tempfile.mkdtemp(prefix="rllib-stpn-tests-home-")
os.environ["HOME"] = _HOME
atexit.register(shutil.rmtree, _HOME, ignore_errors=True)


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
