"""Supervised sequence models and their training loop, shared by the supervised benchmarks.

`associative_retrieval.py` (STPN vs LSTM demo) and `reproduce.py --task art|cfd` all train a
memory core (any name `rllib_stpn.nn.cores.build_core` knows) followed by a linear readout, with
Adam, and measure the paper's synaptic power per step. Read top to bottom: model, parameter
matching, training loop, evaluation.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from rllib_stpn.model_config import count_core_parameters
from rllib_stpn.nn.cores import build_core

Batch = tuple[torch.Tensor, torch.Tensor]

# ---------------------------------------------------------------------------------------------
# Model: memory core -> linear readout (of the last step, or of every step)
# ---------------------------------------------------------------------------------------------


class SequenceModel(nn.Module):
    """`build_core(core, input_size, hidden_size)` followed by `Linear(hidden_size, num_outputs)`.

    `readout="last"` classifies the whole sequence from the last step's output (ART);
    `readout="every"` gives one output per step (continual familiarity detection). As in the
    STPN paper (appendix A.5.1) there is no embedding and no hidden readout layer, so the
    task's difficulty rests on the core.
    """

    def __init__(
        self,
        core: str,
        input_size: int,
        hidden_size: int,
        num_outputs: int,
        *,
        readout: str = "last",
        plasticity: str = "per_synapse",
    ) -> None:
        super().__init__()
        if readout not in ("last", "every"):
            raise ValueError(f"readout must be 'last' or 'every', got {readout!r}")
        self.core = build_core(core, input_size, hidden_size, plasticity=plasticity)
        self.readout = nn.Linear(hidden_size, num_outputs)
        self.readout_mode = readout
        self.hidden_size = hidden_size

    def forward_with_power(
        self, x: torch.Tensor, *, return_power: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits and the per-step power P_t summed over the core's synapses, shape (B, T)."""
        out, _, power = self.core(x, None, return_power=return_power)
        if self.readout_mode == "last":
            out = out[:, -1]
        return self.readout(out), power

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_power(x, return_power=False)[0]


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ---------------------------------------------------------------------------------------------
# Equal parameter counts
# ---------------------------------------------------------------------------------------------


def num_params(
    core: str, input_size: int, hidden_size: int, num_outputs: int, *, plasticity: str
) -> int:
    """Trainable parameters of `SequenceModel`: the core's (`count_core_parameters`) + readout."""
    readout = (hidden_size + 1) * num_outputs
    return count_core_parameters(core, input_size, hidden_size, plasticity=plasticity) + readout


def matched_hidden_size(
    target: int, core: str, input_size: int, num_outputs: int, *, plasticity: str = "per_synapse"
) -> int:
    """The hidden size whose `num_params` is closest to `target` (ties: the smaller one).

    `rllib_stpn.core_hidden_size_for_params` counts an RL module's policy *and* value heads; a
    supervised model has one readout, so the search is done here on `num_params`.
    """
    best, best_err = 1, None
    for h in range(1, 4097):
        n = num_params(core, input_size, h, num_outputs, plasticity=plasticity)
        if best_err is None or abs(n - target) < best_err:
            best, best_err = h, abs(n - target)
        if n > target:  # counts grow with h
            break
    return best


# ---------------------------------------------------------------------------------------------
# Training loop
# ---------------------------------------------------------------------------------------------


def train(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, Batch], torch.Tensor],
    batches: Callable[[int], Iterable[Batch]],
    *,
    epochs: int,
    lr: float = 1e-3,
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
    eval_every: int = 1,
    log_prefix: str | None = None,
) -> list[dict[str, float]]:
    """Adam on `loss_fn` over `batches(epoch)` for each epoch; one record per epoch.

    A record holds the epoch, the mean training loss (weighted by batch size), whatever
    `evaluate(model)` returns (called in eval mode, without gradients, every `eval_every`
    epochs and after the last) and the seconds since the start. `log_prefix` prints each
    record that has an evaluation.
    """
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        total_loss, seen = 0.0, 0
        for batch in batches(epoch):
            loss = loss_fn(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(batch[0])
            seen += len(batch[0])
        record: dict[str, float] = {"epoch": epoch, "loss": total_loss / max(seen, 1)}
        evaluated = epoch % eval_every == 0 or epoch == epochs
        if evaluate is not None and evaluated:
            model.eval()
            with torch.no_grad():
                record.update(evaluate(model))
            model.train()
        record["seconds"] = time.perf_counter() - start
        history.append(record)
        if log_prefix is not None and evaluated:
            extra = "".join(
                f"  {k} {v:.4f}" for k, v in record.items() if k not in ("epoch", "seconds")
            )
            print(
                f"{log_prefix} epoch {epoch:3d}/{epochs}{extra}  ({record['seconds']:.0f} s)",
                flush=True,
            )
    return history


def batched(
    inputs: torch.Tensor,
    targets: torch.Tensor,
    batch_size: int,
    generator: torch.Generator | None = None,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Iterable[Batch]:
    """One shuffled pass over a fixed dataset in minibatches (inputs transformed per batch)."""
    order = torch.randperm(len(inputs), generator=generator)
    for i in range(0, len(inputs), batch_size):
        idx = order[i : i + batch_size]
        x = inputs[idx]
        yield (transform(x) if transform is not None else x), targets[idx]


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate_in_batches(
    model: SequenceModel,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    correct_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    batch_size: int = 1000,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Accuracy (`correct_fn(logits, targets)` gives a 0/1 tensor per prediction) and the
    per-step power (summed over the core's synapses), mean and std over every sequence and step
    (inference)."""
    was_training = model.training
    model.eval()
    correct, count, powers = 0.0, 0, []
    for i in range(0, len(inputs), batch_size):
        x = inputs[i : i + batch_size]
        x = transform(x) if transform is not None else x
        logits, power = model.forward_with_power(x)
        hits = correct_fn(logits, targets[i : i + batch_size])
        correct += hits.sum().item()
        count += hits.numel()
        powers.append(power.reshape(-1))
    model.train(was_training)
    power = torch.cat(powers)
    return {
        "accuracy": correct / count,
        "power_mean": power.mean().item(),
        "power_std": power.std(unbiased=False).item(),
    }
