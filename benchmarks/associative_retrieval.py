"""Associative retrieval (Ba et al. 2016): an STPNr next to an LSTM of the same size.

A sequence holds key-value pairs (distinct lowercase letters, each followed by a digit), then
the separator `??`, then one of the keys; the answer is that key's digit:

    c9k8j3f1??c  ->  9

Each symbol is one-hot over 37 classes (26 letters, 10 digits, '?'). As in the STPN paper
(appendix A.5.1) each network is just its recurrent core followed by a linear softmax readout of
the last hidden state: STPNr with H=11 and an LSTM whose hidden size gives about as many trainable
parameters. Adam, lr 1e-3, cross-entropy.

    python -m benchmarks.associative_retrieval           # CPU-sized demo, a few minutes
    python -m benchmarks.associative_retrieval --full    # paper setting: 100k/10k/20k, batch 128,
                                                         # 200 epochs (hours on a CPU)

Read top to bottom: arguments, data, models, training, main.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.supervised import (
    SequenceModel,
    batched,
    evaluate_in_batches,
    matched_hidden_size,
    num_params,
    trainable_parameters,
)
from benchmarks.supervised import train as supervised_train

# ---------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------

# The demo is sized to finish in a few minutes on 2 CPU cores: 2 pairs and small batches (more
# Adam steps per second; a step costs about the same at batch 32 or 64 at these tiny sizes).
DEMO = dict(pairs=2, train_size=20_000, valid_size=2_000, test_size=2_000, batch_size=32, epochs=10)
# Paper (appendix A.5.1, after Ba et al. 2016): 100k/10k/20k examples, batch 128, 200 epochs.
# Pairs: 3, as the authors' data (AssociativeRetrievalTask/data_art.py builds 9-character
# sequences, "num_keys": 9: 3 pairs, `??`, the query), not the 4 of the example `c9k8j3f1??c`.
FULL = dict(
    pairs=3, train_size=100_000, valid_size=10_000, test_size=20_000, batch_size=128, epochs=200
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; every flag left unset takes the demo (or `--full`) value."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--full", action="store_true", help="the paper's setting (slow on a CPU)")
    p.add_argument("--pairs", type=int, help="key-value pairs per sequence (1-26)")
    p.add_argument("--train-size", type=int, help="training sequences")
    p.add_argument("--valid-size", type=int, help="validation sequences")
    p.add_argument("--test-size", type=int, help="test sequences")
    p.add_argument("--batch-size", type=int, help="sequences per Adam step")
    p.add_argument("--epochs", type=int, help="passes over the training set")
    p.add_argument("--hidden-size", type=int, default=11, help="STPN hidden size (paper: 11)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (paper: 1e-3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and of both models")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    # One thread: the matrices here are tiny (11 x 48), so intra-op threads only add overhead
    # (and on a shared machine they wait on each other).
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ns = p.parse_args(argv)
    preset = FULL if ns.full else DEMO
    for key, value in preset.items():
        if getattr(ns, key) is None:
            setattr(ns, key, value)
    check_args(ns)
    return ns


def check_args(args: argparse.Namespace) -> None:
    """One clear ValueError per bad value."""
    if not 1 <= args.pairs <= 26:
        raise ValueError(
            f"--pairs must be between 1 and 26 (distinct letter keys), got {args.pairs}"
        )
    for name in ("train_size", "valid_size", "test_size", "batch_size", "epochs", "hidden_size"):
        value = getattr(args, name)
        if value <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive int, got {value}")
    if not args.lr > 0:
        raise ValueError(f"--lr must be a positive float, got {args.lr}")
    if args.threads <= 0:
        raise ValueError(f"--threads must be a positive int, got {args.threads}")
    try:
        device = torch.device(args.device)
    except RuntimeError as err:
        raise ValueError(
            f"--device must be a torch device such as cpu or cuda, got {args.device!r}"
        ) from err
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if count == 0 or (device.index is not None and device.index >= count):
            raise ValueError(
                f"--device {args.device!r} asked for CUDA, but torch sees {count} GPU(s)"
            )


# ---------------------------------------------------------------------------------------------
# Data: our own generator of associative-retrieval sequences
# ---------------------------------------------------------------------------------------------

SYMBOLS = "abcdefghijklmnopqrstuvwxyz0123456789?"
NUM_SYMBOLS = len(SYMBOLS)  # 37
NUM_LETTERS, NUM_DIGITS = 26, 10
DIGIT0 = SYMBOLS.index("0")  # token of digit d is DIGIT0 + d
QUERY_MARK = SYMBOLS.index("?")


def sequence_length(pairs: int) -> int:
    """Tokens per sequence: the pairs, `??`, the query key."""
    return 2 * pairs + 3


def make_dataset(
    num_sequences: int, pairs: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample sequences: tokens (N, 2*pairs+3) int64 in [0, 37) and answers (N,) digits 0-9.

    Keys are distinct letters within a sequence (drawn without replacement); values are
    independent uniform digits; the query is one of the keys, uniformly.
    """
    if not 1 <= pairs <= NUM_LETTERS:
        raise ValueError(f"pairs must be between 1 and {NUM_LETTERS}, got {pairs}")
    if num_sequences <= 0:
        raise ValueError(f"num_sequences must be positive, got {num_sequences}")
    n = num_sequences
    # The first `pairs` entries of a random permutation of the 26 letters: distinct keys.
    keys = torch.rand(n, NUM_LETTERS, generator=generator).argsort(dim=1)[:, :pairs]
    values = torch.randint(0, NUM_DIGITS, (n, pairs), generator=generator)
    which = torch.randint(0, pairs, (n, 1), generator=generator)
    tokens = torch.empty(n, sequence_length(pairs), dtype=torch.long)
    tokens[:, 0 : 2 * pairs : 2] = keys
    tokens[:, 1 : 2 * pairs : 2] = DIGIT0 + values
    tokens[:, 2 * pairs : 2 * pairs + 2] = QUERY_MARK
    tokens[:, -1] = keys.gather(1, which).squeeze(1)
    answers = values.gather(1, which).squeeze(1)
    return tokens, answers


def one_hot(tokens: torch.Tensor) -> torch.Tensor:
    """(N, T) tokens -> (N, T, 37) float32 one-hot inputs."""
    return F.one_hot(tokens, NUM_SYMBOLS).float()


def decode(tokens: torch.Tensor) -> str:
    """A (T,) token sequence as text, e.g. 'c9k8j3f1??c'."""
    return "".join(SYMBOLS[t] for t in tokens.tolist())


# ---------------------------------------------------------------------------------------------
# Models: a recurrent core straight into a linear softmax readout of the last step
# ---------------------------------------------------------------------------------------------


class STPNClassifier(SequenceModel):
    """STPNr (recurrent, per-synapse plasticity, normalised) -> Linear(H, 10)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__("stpn", NUM_SYMBOLS, hidden_size, NUM_DIGITS)


class LSTMClassifier(SequenceModel):
    """nn.LSTM -> Linear(H, 10)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__("lstm", NUM_SYMBOLS, hidden_size, NUM_DIGITS)


count_parameters = trainable_parameters


def lstm_params(hidden: int) -> int:
    """Trainable parameters of LSTMClassifier(hidden): 4 gates with W_ih, W_hh, b_ih, b_hh."""
    return num_params("lstm", NUM_SYMBOLS, hidden, NUM_DIGITS, plasticity="per_synapse")


def matching_lstm_hidden(budget: int) -> int:
    """The LSTM hidden size whose parameter count is closest to `budget`."""
    return matched_hidden_size(budget, "lstm", NUM_SYMBOLS, NUM_DIGITS)


# ---------------------------------------------------------------------------------------------
# Training (the loop itself is supervised.train, shared with reproduce.py's supervised tasks)
# ---------------------------------------------------------------------------------------------


def last_step_cross_entropy(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]):
    """Cross-entropy of the readout of the last step against the answer digit."""
    x, y = batch
    return F.cross_entropy(model(x), y)


def _answer_is_argmax(logits: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
    return logits.argmax(-1).cpu() == answers


def evaluate(
    model: SequenceModel, tokens: torch.Tensor, answers: torch.Tensor, batch_size: int = 2000
) -> dict[str, float]:
    """Accuracy and per-step synaptic power (total over the core's synapses; mean, std) over the
    given sequences."""
    device = next(model.parameters()).device
    return evaluate_in_batches(
        model,
        tokens,
        answers,
        _answer_is_argmax,
        batch_size=batch_size,
        transform=lambda t: one_hot(t.to(device)),
    )


def accuracy(
    model: SequenceModel, tokens: torch.Tensor, answers: torch.Tensor, batch_size: int = 2000
) -> float:
    """Fraction of sequences whose arg-max digit is the answer."""
    return evaluate(model, tokens, answers, batch_size)["accuracy"]


def train(
    model: nn.Module,
    train_data: tuple[torch.Tensor, torch.Tensor],
    *,
    epochs: int,
    batch_size: int,
    lr: float = 1e-3,
    generator: torch.Generator | None = None,
    valid_data: tuple[torch.Tensor, torch.Tensor] | None = None,
    log_prefix: str | None = None,
) -> list[dict[str, float]]:
    """Adam on cross-entropy, reshuffling each epoch; returns one dict per epoch.

    Each dict has the epoch, the mean training loss, the validation accuracy and synaptic power
    per step, summed over the core's synapses (when `valid_data` is given) and the seconds
    since the start; `log_prefix` prints them.
    """
    tokens, answers = train_data
    device = next(model.parameters()).device

    def batches(epoch: int):
        return batched(
            tokens,
            answers.to(device),
            batch_size,
            generator,
            transform=lambda t: one_hot(t.to(device)),
        )

    def valid(m: nn.Module) -> dict[str, float]:
        r = evaluate(m, *valid_data)
        return {"valid_acc": r["accuracy"], "valid_power": r["power_mean"]}

    return supervised_train(
        model,
        last_step_cross_entropy,
        batches,
        epochs=epochs,
        lr=lr,
        evaluate=valid if valid_data is not None else None,
        log_prefix=log_prefix,
    )


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    # Data: one seeded stream, split into train / valid / test in that order.
    data_gen = torch.Generator().manual_seed(args.seed)
    train_data = make_dataset(args.train_size, args.pairs, data_gen)
    valid_data = make_dataset(args.valid_size, args.pairs, data_gen)
    test_data = make_dataset(args.test_size, args.pairs, data_gen)
    example = decode(train_data[0][0])
    print(
        f"Associative retrieval, {args.pairs} pairs (T={sequence_length(args.pairs)}), "
        f"train/valid/test {args.train_size}/{args.valid_size}/{args.test_size}, "
        f"batch {args.batch_size}, {args.epochs} epochs, Adam lr {args.lr}, "
        f"{'--full' if args.full else 'demo'} setting, device {device}, "
        f"{args.threads} thread(s). Chance: 10%."
    )
    print(f"Example: {example} -> {train_data[1][0].item()}")

    # Models: STPNr H=hidden_size, and the LSTM with the closest parameter count.
    torch.manual_seed(args.seed)
    stpn = STPNClassifier(args.hidden_size).to(device)
    lstm_hidden = matching_lstm_hidden(count_parameters(stpn))
    lstm = LSTMClassifier(lstm_hidden).to(device)
    print(f"STPNr H={args.hidden_size}: {count_parameters(stpn)} trainable parameters")
    print(f"LSTM  H={lstm_hidden}: {count_parameters(lstm)} trainable parameters")

    results: dict[str, dict[str, float]] = {}
    for name, model in (("STPN", stpn), ("LSTM", lstm)):
        history = train(
            model,
            train_data,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            generator=torch.Generator().manual_seed(args.seed + 1),
            valid_data=valid_data,
            log_prefix=f"[{name}]",
        )
        results[name] = {
            "valid_acc": history[-1]["valid_acc"],
            "best_valid_acc": max(r["valid_acc"] for r in history),
            "test_acc": accuracy(model, *test_data),
            "seconds": history[-1]["seconds"],
        }

    header = ("model", "params", "valid acc", "best valid", "test acc", "time")
    print("\n{:6} {:>7} {:>10} {:>11} {:>9} {:>7}".format(*header))
    for (name, r), model in zip(results.items(), (stpn, lstm)):
        print(
            f"{name:6} {count_parameters(model):7d} {r['valid_acc']:10.2%} "
            f"{r['best_valid_acc']:11.2%} {r['test_acc']:9.2%} {r['seconds']:6.0f}s"
        )
    return results


if __name__ == "__main__":
    try:
        main()
    except ValueError as err:  # a bad flag: say which, without a traceback
        raise SystemExit(f"error: {err}") from None
