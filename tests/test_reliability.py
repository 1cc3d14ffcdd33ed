"""Issue 18: faults and bad inputs end in one clear line (or a warning), never a hang, a raw
traceback or files left behind."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

LOAD_KERNEL = "from rllib_stpn.nn import fused_cpp; fused_cpp.load(); print('kernel ok')"


def _private_kernel_cache(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """An environment with its own torch extensions dir, seeded with this checkout's build
    of the kernel when there is one (ninja then only checks it), and that build's directory."""
    from rllib_stpn.nn import fused_cpp

    name = fused_cpp._namespace()
    built = fused_cpp.build_directory(name)  # where this process's cache has (or gets) it
    root = tmp_path / "torch_extensions"
    target = root / name
    if any(built.glob("*.so")):
        shutil.copytree(built, target, ignore=shutil.ignore_patterns("lock", "build.flock"))
    else:
        target.mkdir(parents=True)
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(root)}
    env.pop(fused_cpp.DISABLE_ENV, None)
    return env, target


def test_stale_kernel_lock_is_cleared(tmp_path):
    """A builder killed mid-build leaves torch's `lock`; torch would wait for it forever."""
    env, build_dir = _private_kernel_cache(tmp_path)
    (build_dir / "lock").touch()
    proc = subprocess.run(
        [sys.executable, "-c", LOAD_KERNEL],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "kernel ok" in proc.stdout
    assert not (build_dir / "lock").exists()


def test_kernel_lock_wait_is_bounded(tmp_path):
    """A live builder that never finishes: the wait ends in one line naming the lock."""
    env, build_dir = _private_kernel_cache(tmp_path)
    env["RLLIB_STPN_KERNEL_LOCK_TIMEOUT"] = "1"
    flock = build_dir / "build.flock"
    with open(flock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # this test process plays the stuck builder
        proc = subprocess.run(
            [sys.executable, "-c", LOAD_KERNEL],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("rllib_stpn.nn.fused_cpp.KernelLockTimeout: waited 1 s"), last
    assert f"rm {flock}" in last
