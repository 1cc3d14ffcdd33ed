"""The C++ kernel's checkpointed saved states: memory and time against keeping every state.

At the 64-env Pong learner size (64 rows of 51 steps, CNN features 2592 -> STPN H=64) it runs
forward + backward of out.sum() + power.sum() with every state kept (k = 1) and with every k-th
state kept (k = round(sqrt(T - 1)), the backward recomputing the rest), interleaved, and prints
the saved-states bytes, the median times and their ratio.

    python -m benchmarks.saved_states [--threads 2] [--rows 64] [--reps 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from rllib_stpn import STPN
from rllib_stpn.nn import fused_cpp

STEPS, FEATURES, HIDDEN = 51, 2592, 64  # max_seq_len 50 plus A2C's bootstrap step


def measure(layer: STPN, x: torch.Tensor, every: int) -> tuple[float, float, int]:
    """(forward s, forward + backward s, saved-states bytes) of one call with interval `every`."""
    fused_cpp.CHECKPOINT_EVERY = every
    xs = x.clone().requires_grad_()
    start = time.perf_counter()
    out, _, power = layer(xs, return_power=True)
    forward = time.perf_counter() - start
    saved = sum(
        t.numel() * t.element_size()
        for t in out.grad_fn.saved_tensors
        if t is not None and t.dim() == 4
    )
    (out.sum() + power.sum()).backward()
    return forward, time.perf_counter() - start, saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--rows", type=int, default=64, help="training rows (envs; default 64)")
    parser.add_argument("--reps", type=int, default=3, help="timed calls per variant")
    args = parser.parse_args()
    if min(args.threads, args.rows, args.reps) < 1:
        parser.error("--threads, --rows and --reps must be >= 1")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    fused_cpp.load()
    layer = STPN(FEATURES, HIDDEN)
    x = torch.randn(args.rows, STEPS, FEATURES).relu()
    # The interval the kernel picks beyond its memory budget (forced here at any size).
    k = fused_cpp.checkpoint_every(STEPS, 2**62)
    times: dict[str, list[tuple[float, float]]] = {"all": [], "checkpointed": []}
    saved: dict[str, int] = {}
    try:
        for rep in range(args.reps + 1):  # the first round warms the buffers up
            for name, every in (("all", 1), ("checkpointed", k)):
                forward, total, saved[name] = measure(layer, x, every)
                if rep:
                    times[name].append((forward, total))
    finally:
        fused_cpp.CHECKPOINT_EVERY = None
    print(
        f"STPN op, {args.rows} rows x {STEPS} steps, I={FEATURES}, H={HIDDEN}, "
        f"{args.threads} threads"
    )
    print(f"{'states kept':<26}{'saved MiB':>10}{'forward ms':>12}{'fwd+bwd ms':>12}")
    medians = {}
    for name, label in (("all", "all (k=1)"), ("checkpointed", f"every {k}th, rest recomputed")):
        fwd = 1e3 * statistics.median(f for f, _ in times[name])
        medians[name] = 1e3 * statistics.median(t for _, t in times[name])
        print(f"{label:<26}{saved[name] / 2**20:>10.0f}{fwd:>12.0f}{medians[name]:>12.0f}")
    print(
        f"checkpointed / all: memory {saved['checkpointed'] / saved['all']:.2f}x, "
        f"time {medians['checkpointed'] / medians['all']:.2f}x"
    )


if __name__ == "__main__":
    main()
