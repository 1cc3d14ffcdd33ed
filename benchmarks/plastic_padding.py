"""The plastic cores on PPO's padded training rows: time loop over the padding vs skipping it.

RLlib zero-pads every training row to max_seq_len. A POPGym minibatch of the suite (5 rows of
100 steps, episodes of 51 steps: RepeatPrevious, RepeatFirst, CountRecall at Easy) has at most
51 valid steps a row. This runs forward + backward of each plastic core at the suite's sizes
(encoder output 64, hidden size at the anchor's parameter count) once over all 100 steps and
once with `seq_lens` (the loop stops after the longest row), interleaved in one process, and
prints the median times and their ratio.

    python -m benchmarks.plastic_padding [--rows 5] [--steps 100] [--valid 51] [--reps 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.popgym_suite import ENCODER_HIDDENS, core_size
from rllib_stpn.nn.cores import build_core


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not argparse's usage block
        self.exit(2, f"plastic_padding: error: {message}\n")


PLASTIC = ("fastweights", "modplast", "hebbff", "plastic_hebbian", "plastic_gradient")
REPEAT_PREVIOUS_OUTPUTS = 4  # the policy logits of RepeatPreviousEasy (its heads count too)


def fwd_bwd(core: torch.nn.Module, x: torch.Tensor, seq_lens: torch.Tensor | None) -> float:
    start = time.perf_counter()
    out, _, _ = core(x, seq_lens=seq_lens)
    out.square().sum().backward()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    p = _Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=5, help="rows a minibatch (500 steps / 100)")
    p.add_argument("--steps", type=int, default=100, help="max_seq_len")
    p.add_argument("--valid", type=int, default=51, help="longest row's valid steps")
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args(argv)
    for flag in ("rows", "steps", "reps"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag} must be a positive integer, got {getattr(args, flag)}")
    if not 1 <= args.valid <= args.steps:
        p.error(f"--valid must be in [1, --steps={args.steps}], got {args.valid}")
    torch.set_num_threads(1)  # as the suite's runs
    torch.manual_seed(0)
    lens = torch.randint(1, args.valid + 1, (args.rows,))
    lens[0] = args.valid
    x = torch.randn(args.rows, args.steps, ENCODER_HIDDENS[-1])
    x[torch.arange(args.steps) >= lens.unsqueeze(1)] = 0.0  # RLlib's zero padding
    print(f"{args.rows} rows x {args.steps} steps, valid lengths {lens.tolist()}, 1 thread")
    print(f"{'core':<18}{'H':>5}{'padded ms':>12}{'seq_lens ms':>13}{'ratio':>8}")
    for name in PLASTIC:
        hidden, _ = core_size(name, REPEAT_PREVIOUS_OUTPUTS)  # the suite's equal-parameter size
        core = build_core(name, ENCODER_HIDDENS[-1], hidden)
        full, skip = [], []
        for _ in range(args.reps + 1):  # the first pair warms up
            full.append(fwd_bwd(core, x, None))
            skip.append(fwd_bwd(core, x, lens))
        f, s = statistics.median(full[1:]), statistics.median(skip[1:])
        print(f"{name:<18}{hidden:>5}{1e3 * f:>12.1f}{1e3 * s:>13.1f}{f / s:>7.2f}x", flush=True)


if __name__ == "__main__":
    main()
