"""Python side of the C++ (OpenMP) kernel of the fused STPN sequence op, built at first use.

The kernel is `stpn_kernel.cpp` beside this file (its header comment says how it is organised).
Same maths and derivation as `rllib_stpn.nn.fused` (see its docstring); what changes is the
memory traffic on the (B, H, D) state F, which is the layer's whole cost: the forward reads F_t
once and writes F_{t+1} once per step, the backward makes one read-modify-write pass over dL/dF.

The library is built with `torch.utils.cpp_extension.load` into torch's extensions directory
(g++, ninja and OpenMP; 15-75 s the first time, then loaded from the cache) and registered as
`torch.ops.rllib_stpn_fused_<hash>`; the hash covers the source, the compiler flags and the
torch installation. The build is logged at INFO. `available()` says whether the kernel can be
used; it never raises, and
`rllib_stpn.nn.fused` falls back to the pure-torch op (about 3x slower at the Pong size) when it
is False, logging the reason once at WARNING; also for CUDA tensors, and without a warning when
the environment variable RLLIB_STPN_NO_CPP=1 asks for it.

torch guards a build with a `lock` file that nothing removes when the builder is killed, and it
waits for that file forever. So the build runs under an flock of our own (`build.flock` in the
build directory, released by the kernel when a process dies): whoever holds it knows any torch
`lock` left there is stale and removes it. Waiting for a live builder is bounded
(RLLIB_STPN_KERNEL_LOCK_TIMEOUT seconds, default 900) and ends in a one-line error.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import math
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import torch
from torch.autograd.function import once_differentiable

from rllib_stpn.nn.functional import (
    NORM_EPS,
    apply_sequence_function,
    last_hidden,
    lengths_or_none,
    needs_autograd,
)

logger = logging.getLogger(__name__)

DISABLE_ENV = "RLLIB_STPN_NO_CPP"
LOCK_TIMEOUT_ENV = "RLLIB_STPN_KERNEL_LOCK_TIMEOUT"
DEFAULT_LOCK_TIMEOUT_S = 900.0
SOURCE = Path(__file__).with_name("stpn_kernel.cpp")


def _cpu_flags() -> list[str]:
    """The vector instructions this x86 CPU has: -mavx2 -mfma (about 20% faster at the Pong size
    than SSE), and AVX-512 on top where present (a sampling step 20% faster again).

    They are part of the build's name, so a cache directory shared with a CPU without them
    gets a separate build instead of an illegal instruction.
    """
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    out = ["-mavx2", "-mfma"] if {"avx2", "fma"} <= flags else []
                    if out and {"avx512f", "avx512vl"} <= flags:
                        out += ["-mavx512f", "-mavx512vl", "-mprefer-vector-width=512"]
                    return out
    except OSError:
        pass
    return []


_CFLAGS = ["-O3", "-fopenmp", *_cpu_flags()]

# One lock guards the whole first use: two threads that both find the kernel missing must not
# both build it, and none may see "tried" before the outcome is recorded.
_lock = threading.Lock()
_state: dict = {"tried": False, "ops": None, "error": None}


def _namespace() -> str:
    """`rllib_stpn_fused_<hash of the source, the flags and the torch installation>`.

    The torch directory is in the name because the build file names its headers: two
    environments sharing one cache directory would otherwise rebuild over each other in turn.
    """
    key = (
        SOURCE.read_bytes() + " ".join(_CFLAGS).encode() + os.path.dirname(torch.__file__).encode()
    )
    return f"rllib_stpn_fused_{hashlib.sha256(key).hexdigest()[:12]}"


def _ensure_ninja_on_path() -> None:
    """torch builds with the `ninja` it finds on PATH. The PyPI `ninja` package puts it next to
    the interpreter (a venv's bin/), which is not on PATH when the venv is not activated."""
    if shutil.which("ninja"):
        return
    candidates = [os.path.dirname(sys.executable)]
    try:
        import ninja  # the PyPI package: the binary lives in its BIN_DIR

        candidates.insert(0, ninja.BIN_DIR)
    except (ImportError, AttributeError):
        pass
    for folder in candidates:
        if shutil.which("ninja", path=folder):
            os.environ["PATH"] = folder + os.pathsep + os.environ.get("PATH", "")
            return


class KernelLockTimeout(RuntimeError):
    """Another process held the kernel's build lock for longer than the timeout."""


def _lock_timeout() -> float:
    text = os.environ.get(LOCK_TIMEOUT_ENV, "").strip()
    try:
        return float(text) if text else DEFAULT_LOCK_TIMEOUT_S
    except ValueError:
        return DEFAULT_LOCK_TIMEOUT_S


def build_directory(name: str) -> Path:
    """Where torch builds extension `name` (created if missing)."""
    from torch.utils.cpp_extension import _get_build_directory

    return Path(_get_build_directory(name, verbose=False))


@contextlib.contextmanager
def build_lock(build_dir: Path, timeout: float | None = None):
    """Hold `build_dir/build.flock` exclusively; clear a stale torch `lock` once it is ours.

    Only a process holding this flock runs torch's build of our kernel, so a torch `lock`
    found while we hold it was left by a builder that died (SIGKILL, a second Ctrl-C).
    """
    timeout = _lock_timeout() if timeout is None else timeout
    path = build_dir / "build.flock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise KernelLockTimeout(
                        f"waited {timeout:g} s for another process building the STPN kernel "
                        f"(it holds {path}); if that build is stuck, stop it or run: rm {path}"
                    ) from None
                time.sleep(0.2)
        stale = build_dir / "lock"
        if stale.exists():
            logger.warning("removing the stale torch build lock %s (its builder is gone)", stale)
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        yield
    finally:
        os.close(fd)  # releases the flock


def _load_locked():
    if _state["ops"] is not None:
        return _state["ops"]
    from torch.utils.cpp_extension import load as load_extension

    _ensure_ninja_on_path()
    name = _namespace()
    logger.info("STPN C++ kernel %s: building or loading from torch's extension cache", name)
    start = time.perf_counter()
    with build_lock(build_directory(name)):
        load_extension(
            name=name,
            sources=[str(SOURCE)],
            extra_cflags=[*_CFLAGS, f"-DSTPN_NAMESPACE={name}"],
            extra_ldflags=["-fopenmp"],
            is_python_module=False,
            verbose=False,
        )
    _state["ops"] = getattr(torch.ops, name)
    logger.info("STPN C++ kernel %s ready (%.1f s)", name, time.perf_counter() - start)
    return _state["ops"]


def load():
    """Build (first time) or load the extension; returns its ops namespace. Raises on failure."""
    with _lock:
        return _load_locked()


def available() -> bool:
    """Whether the C++ kernel can be used (tries to build it once per process; never raises)."""
    if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
        return False
    if _state["ops"] is not None:
        return True
    with _lock:
        if not _state["tried"]:
            try:
                _load_locked()
            except Exception as exc:  # any build/load failure: fall back to pure torch
                _state["error"] = exc
                logger.warning(
                    "STPN C++ kernel unavailable (%s: %s); using the pure-torch fused op, about "
                    "3x slower on the CPU. Set %s=1 to choose it without this warning.",
                    type(exc).__name__,
                    " ".join(str(exc).split())[:500],
                    DISABLE_ENV,
                )
            _state["tried"] = True
    return _state["ops"] is not None


def release_buffers() -> None:
    """Free the kernel's pooled buffers that nothing refers to any more.

    The C++ op keeps its large buffers (the new F and a training forward's saved states, about
    270 MB at the paper's Pong size) for the next call instead of faulting in fresh memory each
    time; call this to give that memory back, e.g. after training, before measuring memory.
    """
    if _state["ops"] is not None:
        _state["ops"].release()


def supports(*tensors: torch.Tensor | None) -> bool:
    """CPU float32/float64 tensors of one dtype, and the kernel built: the C++ path applies."""
    present = [t for t in tensors if t is not None]
    dtype = present[0].dtype
    if dtype not in (torch.float32, torch.float64):
        return False
    if any(t.device.type != "cpu" or t.dtype != dtype for t in present):
        return False
    return available()


def _expand(p: torch.Tensor, H: int, D: int) -> torch.Tensor:
    """Uniform (scalar) Λ / Γ as an (H, D) tensor: one kernel serves both plasticity modes."""
    return p.expand(H, D).contiguous() if p.dim() == 0 else p


# The training forward keeps the states F_1..F_{T-1} for the backward while they take at most
# SAVED_STATES_BUDGET bytes (fastest). Beyond it, only every k-th state, k = round(sqrt(T - 1)),
# which minimises the states held at once, and the backward recomputes the states between two
# of them (one extra pass over F per recomputed step): at the Pong size with 64 envs, 0.54 GiB
# instead of 2.0 GiB. CHECKPOINT_EVERY (tests) forces a k.
SAVED_STATES_BUDGET = 512 * 2**20
CHECKPOINT_EVERY: int | None = None


def checkpoint_every(steps: int, state_bytes: int = 0) -> int:
    """The checkpoint interval k of a training call over `steps` steps whose state F (the
    whole batch's) takes `state_bytes`; 1 keeps every state."""
    if CHECKPOINT_EVERY is not None:
        return max(1, int(CHECKPOINT_EVERY))
    if (steps - 1) * state_bytes <= SAVED_STATES_BUDGET:
        return 1
    return max(1, round(math.sqrt(steps - 1)))


def _clamp_value(f_clamp: float | None) -> float:
    """The kernel's clamp bound: +inf when there is no clamp."""
    return float("inf") if f_clamp is None else f_clamp


def _kernel_forward(
    args: tuple,
    recurrent: bool,
    normalize: bool,
    return_power: bool,
    variant: tuple,
    *,
    keep: bool,
    every: int = 1,
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """(Λ, Γ as (H, D), the kernel's outputs out, F_T, the checkpointed states (every `every`-th),
    s, n, r, P, ||W + C||)."""
    x, h, F, weight, bias, weight_lambda, weight_gamma, lens = args
    f_clamp, post_update_norm = variant
    H, D = weight.shape
    lam, gam = _expand(weight_lambda, H, D), _expand(weight_gamma, H, D)
    outputs = load().forward(
        x,
        h,
        F,
        weight,
        bias,
        lam,
        gam,
        lens,
        recurrent,
        normalize,
        return_power,
        keep,
        NORM_EPS,
        _clamp_value(f_clamp),
        post_update_norm,
        every,
    )
    return lam, gam, outputs


class STPNSequenceCppFunction(torch.autograd.Function):
    """The fused sequence op on the C++ kernel; same signature as `STPNSequenceFunction`."""

    @staticmethod
    def forward(
        ctx,
        x: torch.Tensor,
        h0: torch.Tensor,
        F0: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        weight_lambda: torch.Tensor,
        weight_gamma: torch.Tensor,
        lens: torch.Tensor | None,
        recurrent: bool,
        normalize: bool,
        return_power: bool,
        f_clamp: float | None = None,
        post_update_norm: bool = False,
    ):
        args = (x, h0, F0, weight, bias, weight_lambda, weight_gamma, lens)
        variant = (f_clamp, post_update_norm)
        every = checkpoint_every(x.shape[1], F0.numel() * F0.element_size())
        lam, gam, (out, FT, Fs, S, N, R, P, M) = _kernel_forward(
            args, recurrent, normalize, return_power, variant, keep=True, every=every
        )
        ctx.every = every
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, h0, F0, Fs, weight, lam, gam, out, S, N, R, P, M, lens)
        ctx.flags = (recurrent, normalize, return_power, weight_lambda.dim() == 0, bias is not None)
        ctx.variant = variant
        h_out = last_hidden(out, h0, lens)
        if not return_power:
            return out, h_out, FT
        return out, h_out, FT, P.sum(-1)

    @staticmethod
    @once_differentiable
    def backward(ctx, g_out, g_h, g_F, g_power=None):
        x, h0, F0, Fs, W, lam, gam, out, S, N, R, P, M, lens = ctx.saved_tensors
        recurrent, normalize, return_power, uniform, has_bias = ctx.flags
        f_clamp, post_update_norm = ctx.variant
        needs = ctx.needs_input_grad
        # dL/dF is carried in place: start from a private copy of the given gradient (or zeros).
        gF = torch.zeros_like(F0) if g_F is None else g_F.contiguous().clone()
        gP = g_power if return_power else None
        dx, dh0, dW, db, dlam, dgam = load().backward(
            x,
            h0,
            F0,
            Fs,
            W,
            lam,
            gam,
            out,
            S,
            N,
            R,
            P,
            M,
            g_out,
            g_h,
            gP,
            gF,
            lens,
            recurrent,
            normalize,
            NORM_EPS,
            _clamp_value(f_clamp),
            post_update_norm,
            ctx.every,
        )
        if uniform:
            dlam, dgam = dlam.sum(), dgam.sum()
        return (
            dx if needs[0] else None,
            dh0 if needs[1] else None,
            gF if needs[2] else None,
            dW if needs[3] else None,
            db if (has_bias and needs[4]) else None,
            dlam if needs[5] else None,
            dgam if needs[6] else None,
            None,
            None,
            None,
            None,
            None,
            None,
        )


def stpn_sequence_cpp(
    x: torch.Tensor,
    h: torch.Tensor,
    F: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    weight_lambda: torch.Tensor,
    weight_gamma: torch.Tensor,
    *,
    recurrent: bool,
    normalize: bool,
    return_power: bool,
    seq_lens: torch.Tensor | None = None,
    f_clamp: float | None = None,
    post_update_norm: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Drop-in for `stpn_sequence_reference` on the C++ kernel (CPU, float32/float64).

    With `seq_lens` the kernel runs each sample for its own number of steps only.
    """
    lens = lengths_or_none(seq_lens, x.shape[0], x.shape[1])
    args = (x, h, F, weight, bias, weight_lambda, weight_gamma, lens)
    variant = (f_clamp, post_update_norm)
    if not needs_autograd(*args[:7]):
        # Sampling path: nothing kept for backward, two F buffers.
        with torch.no_grad():
            _, _, (out, FT, *_, P, _) = _kernel_forward(
                args, recurrent, normalize, return_power, variant, keep=False
            )
        return out, last_hidden(out, h, lens), FT, P.sum(-1) if return_power else None
    return apply_sequence_function(
        STPNSequenceCppFunction, args, recurrent, normalize, return_power, *variant
    )
