"""STPN layer cost: fused op vs autograd reference vs an LSTM with as many parameters.

The fused op runs on its C++ kernel when it builds (`rllib_stpn.nn.fused_cpp`); the column
`torch s` times the pure-torch fused op (the fallback, forced with RLLIB_STPN_NO_CPP=1).

    python -m benchmarks.stpn_cell            # paper sizes (a few minutes on 2 cores)
    python -m benchmarks.stpn_cell --quick    # small sizes, seconds

Runs on the CPU with --threads torch threads (default 1). For each size it prints the
forward+backward time (median of --reps warm runs, loss = out.sum()),
the peak memory allocated during one forward+backward, and the no-grad single-step time used
while sampling.

Peak memory: allocations and frees recorded by the torch profiler (`profile_memory=True`),
replayed in order; the peak of the running total above what was allocated before the call.
It counts every tensor torch allocates on the CPU (the inputs x and parameters excluded).

Bandwidth floor: the time to move 10 passes over F per step, 10·T·|F| bytes, at the memory
bandwidth measured in the same run by copying a 256 MiB tensor (bytes read + bytes written per
second, out of cache). The fused op's ratio to it is printed as `x floor`.

The reference keeps several (B, H, D) tensors per step; when its estimated peak exceeds
--ref-max-gb it runs on fewer steps and its time is scaled by T / T_run (its cost per step does not
depend on T); the table marks it with `*`.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time

import torch
from torch import nn
from torch._C._profiler import _EventType
from torch.profiler import ProfilerActivity, profile

from rllib_stpn import STPN
from rllib_stpn.nn import fused_cpp

SIZES = {  # name: (T, B, I, H)
    "pong": (50, 16, 2592, 64),
    "maze": (200, 512, 17, 55),
    "pendulum": (50, 32, 4, 64),
}
QUICK_SIZES = {
    "pong-quick": (10, 4, 648, 32),
    "maze-quick": (40, 64, 17, 55),
    "pendulum-quick": (20, 32, 4, 64),
}


def lstm_hidden_for(params: int, input_size: int) -> int:
    """Hidden size of an nn.LSTM with about `params` parameters: 4(H·I + H² + 2H) = params."""
    a, b = 4.0, 4.0 * (input_size + 2)
    return max(1, round((-b + math.sqrt(b * b + 4 * a * params)) / (2 * a)))


def fwd_bwd(module: nn.Module, x: torch.Tensor) -> None:
    out = module(x)[0]
    out.sum().backward()


def time_it(fn, reps: int) -> float:
    fn()  # warm-up (first-touch page faults, BLAS init)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_bytes(fn) -> int:
    """Peak CPU bytes allocated by torch while `fn` runs, above the level at its start.

    The C++ op's pooled buffers are released first, so that they are allocated (and counted)
    again: the figure is what one call needs, not what an earlier call left behind.
    """
    fused_cpp.release_buffers()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    allocs = []

    def walk(nodes):
        for node in nodes:
            if node.tag == _EventType.Allocation:
                allocs.append((node.start_time_ns, node.extra_fields.alloc_size))
            walk(node.children)

    walk(prof.profiler.kineto_results.experimental_event_tree())
    running = peak = 0
    for _, size in sorted(allocs, key=lambda a: a[0]):
        running += size
        peak = max(peak, running)
    return peak


def bandwidth() -> float:
    """Bytes moved per second (read + write) by a 256 MiB out-of-cache copy."""
    src = torch.ones(64 * 2**20)
    dst = torch.empty_like(src)
    seconds = time_it(lambda: dst.copy_(src), 5)
    return 2 * src.numel() * src.element_size() / seconds


class pure_torch:
    """Within this block the fused op takes its pure-torch path."""

    def __enter__(self) -> None:
        self.before = os.environ.get(fused_cpp.DISABLE_ENV)
        os.environ[fused_cpp.DISABLE_ENV] = "1"

    def __exit__(self, *exc) -> None:
        if self.before is None:
            os.environ.pop(fused_cpp.DISABLE_ENV)
        else:
            os.environ[fused_cpp.DISABLE_ENV] = self.before


def single_step(layer: STPN, B: int) -> float:
    x = torch.randn(B, 1, layer.input_size)
    state = layer.initial_state(B)

    def step():
        with torch.no_grad():
            layer(x, state)

    return time_it(step, 20)


def run_size(name, T, B, I, H, args, bw) -> dict:
    torch.manual_seed(0)
    fused = STPN(I, H)
    ref = STPN(I, H, implementation="reference")
    ref.load_state_dict(fused.state_dict())
    n_params = sum(p.numel() for p in fused.parameters())
    H_lstm = lstm_hidden_for(n_params, I)
    lstm = nn.LSTM(I, H_lstm, batch_first=True)
    x = torch.randn(B, T, I)
    F_bytes = B * H * fused.synapse_size * 4
    row = {"name": name, "size": f"T={T} B={B} I={I} H={H}", "F_MB": F_bytes / 2**20}
    row["lstm_H"] = H_lstm

    row["fused_s"] = time_it(lambda: fwd_bwd(fused, x), args.reps)
    row["fused_mem"] = peak_bytes(lambda: fwd_bwd(fused, x))
    with pure_torch():
        row["torch_s"] = time_it(lambda: fwd_bwd(fused, x), args.reps)
        row["torch_mem"] = peak_bytes(lambda: fwd_bwd(fused, x))
    row["lstm_s"] = time_it(lambda: fwd_bwd(lstm, x), args.reps)
    row["lstm_mem"] = peak_bytes(lambda: fwd_bwd(lstm, x))

    # Reference: estimate its peak from a short run, shorten it if it would not fit.
    T_probe = min(T, 5)
    probe = peak_bytes(lambda: fwd_bwd(ref, x[:, :T_probe]))
    est = probe * T / T_probe
    T_ref = (
        T
        if est <= args.ref_max_gb * 2**30
        else max(T_probe, int(T * args.ref_max_gb * 2**30 / est))
    )
    x_ref = x[:, :T_ref]
    row["ref_s"] = time_it(lambda: fwd_bwd(ref, x_ref), max(1, args.reps - 1)) * T / T_ref
    row["ref_mem"] = peak_bytes(lambda: fwd_bwd(ref, x_ref))
    row["ref_T"] = T_ref

    row["floor_s"] = 10 * T * F_bytes / bw
    row["step_fused_ms"] = 1e3 * single_step(fused, B)
    with pure_torch():
        row["step_torch_ms"] = 1e3 * single_step(fused, B)
    row["step_ref_ms"] = 1e3 * single_step(ref, B)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (seconds)")
    parser.add_argument("--sizes", nargs="*", help="subset of: " + ", ".join(SIZES))
    parser.add_argument("--reps", type=int, default=3, help="timed runs per measurement")
    parser.add_argument(
        "--ref-max-gb", type=float, default=6.0, help="memory cap for the reference"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: stabler on a shared machine)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sizes = QUICK_SIZES if args.quick else SIZES
    if args.sizes:
        sizes = {k: SIZES.get(k) or QUICK_SIZES[k] for k in args.sizes}

    bw = bandwidth()
    backend = "C++ kernel" if fused_cpp.available() else "pure torch (C++ kernel unavailable)"
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, copy bandwidth "
        f"{bw / 1e9:.1f} GB/s (read + write); fused op: {backend}"
    )
    rows = [run_size(name, *dims, args, bw) for name, dims in sizes.items()]
    print()
    print(
        "forward+backward (loss = out.sum()); memory = peak torch CPU allocation; "
        "|F| = B·H·D·4 bytes"
    )
    header = (
        f"{'size':<16}{'fused s':>9}{'torch s':>9}{'ref s':>10}{'LSTM s':>9}{'ref/fused':>10}"
        f"{'x floor':>9}{'fused mem':>11}{'/|F|':>7}{'torch mem':>11}{'ref mem':>10}{'/|F|':>7}"
        f"{'LSTM mem':>10}{'step fused':>12}{'step torch':>12}{'step ref':>10}"
    )
    print(header)
    for r in rows:
        star = "*" if r["ref_T"] != int(r["size"].split()[0][2:]) else " "
        F = r["F_MB"] * 2**20
        print(
            f"{r['name']:<16}{r['fused_s']:>9.3f}{r['torch_s']:>9.3f}"
            f"{r['ref_s']:>9.3f}{star}{r['lstm_s']:>9.3f}"
            f"{r['ref_s'] / r['fused_s']:>9.1f}x{r['fused_s'] / r['floor_s']:>8.2f}x"
            f"{r['fused_mem'] / 2**20:>9.0f}MB{r['fused_mem'] / F:>7.1f}"
            f"{r['torch_mem'] / 2**20:>9.0f}MB"
            f"{r['ref_mem'] / 2**20:>8.0f}MB{r['ref_mem'] / F:>7.1f}"
            f"{r['lstm_mem'] / 2**20:>8.0f}MB"
            f"{r['step_fused_ms']:>10.2f}ms{r['step_torch_ms']:>10.2f}ms{r['step_ref_ms']:>8.2f}ms"
        )
    print()
    for r in rows:
        note = (
            f", reference run at T={r['ref_T']} and scaled"
            if r["ref_T"] != int(r["size"].split()[0][2:])
            else ""
        )
        print(
            f"{r['name']}: {r['size']}, |F| = {r['F_MB']:.1f} MB, LSTM hidden {r['lstm_H']}, "
            f"floor {r['floor_s']:.3f} s{note}"
        )


if __name__ == "__main__":
    main()
