"""A2C's loss options: the exploration term and how per-step terms are reduced (pure torch).

The STPN authors' maze loss (Maze/Scripts/run_maze.py, after Miconi et al.'s Backpropamine
code) differs from textbook A2C in its exploration term: a penalty ``+c * sum_a pi(a|s)^2``
(the Simpson concentration of the policy; their comment: "implement it as a penalty on the
sum of squares instead" of an entropy bonus). Three reductions of the per-step terms:

- "mean": over all steps of the batch (textbook A2C, and also that maze code: its per-step sums
  are divided by the batch size and by the episode length, `loss /= params['eplen']`);
- "sum": over all steps of the batch (RLlib's old-stack A3C/A2C torch policy, which the
  authors' Pong run used: `pi_err = -torch.sum(...)`, `value_err = 0.5 * torch.sum(...)`);
- "sum_per_episode": over each episode chunk's steps, averaged over the chunks.

With Adam the scale matters through `grad_clip` (a global norm on the reduced loss's gradient)
and Adam's epsilon.
"""

from __future__ import annotations

import torch

EXPLORATION_LOSSES = ("entropy", "sum_squared_probs")
LOSS_REDUCTIONS = ("mean", "sum", "sum_per_episode")


def exploration_penalty(action_dist, dist_inputs: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-step exploration term that the loss ADDS (times its coefficient), shaped like the
    steps: ``-entropy`` for "entropy", ``sum_a softmax(logits)_a^2`` for "sum_squared_probs"
    (Categorical policies only; `dist_inputs` are the logits)."""
    if kind == "entropy":
        return -action_dist.entropy()
    if kind == "sum_squared_probs":
        return torch.softmax(dist_inputs, dim=-1).pow(2).sum(-1)
    raise ValueError(f"exploration_loss must be one of {EXPLORATION_LOSSES}, got {kind!r}")


def reduce_steps(
    x: torch.Tensor, mask: torch.Tensor, reduction: str, num_sequences: torch.Tensor | int
) -> torch.Tensor:
    """Sum of `x` over the steps in `mask` ("sum"), divided by the number of those steps
    ("mean") or by `num_sequences`, the episode chunks they come from ("sum_per_episode")."""
    total = x[mask].sum()
    if reduction == "mean":
        return total / mask.sum()
    if reduction == "sum":
        return total
    if reduction == "sum_per_episode":
        return total / num_sequences
    raise ValueError(f"loss_reduction must be one of {LOSS_REDUCTIONS}, got {reduction!r}")
