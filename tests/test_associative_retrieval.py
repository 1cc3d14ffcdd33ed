"""The associative-retrieval demo script: its data generator, CLI checks and training loop."""

from __future__ import annotations

import importlib

import pytest
import torch


@pytest.fixture(scope="module")
def ar():
    """The script as a module (`python -m benchmarks.associative_retrieval` runs it)."""
    return importlib.import_module("benchmarks.associative_retrieval")


@pytest.mark.parametrize("pairs", [1, 4, 26])
def test_sequences_are_well_formed(ar, pairs):
    tokens, answers = ar.make_dataset(500, pairs, torch.Generator().manual_seed(3))
    assert tokens.shape == (500, 2 * pairs + 3) and tokens.dtype == torch.long
    assert answers.shape == (500,)
    for seq, answer in zip(tokens.tolist(), answers.tolist()):
        text = "".join(ar.SYMBOLS[t] for t in seq)
        keys, values = text[0 : 2 * pairs : 2], text[1 : 2 * pairs : 2]
        assert all(k in "abcdefghijklmnopqrstuvwxyz" for k in keys), text
        assert all(v in "0123456789" for v in values), text
        assert len(set(keys)) == pairs, f"keys repeat in {text}"
        assert text[2 * pairs : 2 * pairs + 2] == "??", text
        query = text[-1]
        assert query in keys, text
        # The answer is the digit right after the query key's first (only) occurrence.
        assert answer == int(values[keys.index(query)]), text
        assert ar.decode(torch.tensor(seq)) == text


def test_answers_and_queries_cover_every_class(ar):
    tokens, answers = ar.make_dataset(4000, 4, torch.Generator().manual_seed(0))
    counts = torch.bincount(answers, minlength=10)
    assert counts.numel() == 10 and counts.min() > 300  # ~400 each: no digit is left out
    positions = (tokens[:, :8:2] == tokens[:, -1:]).float().argmax(1)
    assert torch.bincount(positions, minlength=4).min() > 800  # the query picks each pair


def test_one_hot_encoding(ar):
    tokens, _ = ar.make_dataset(50, 3, torch.Generator().manual_seed(1))
    x = ar.one_hot(tokens)
    assert x.shape == (50, 9, 37) and x.dtype == torch.float32
    assert torch.equal(x.sum(-1), torch.ones(50, 9))
    assert torch.equal(x.argmax(-1), tokens)
    assert ar.SYMBOLS == "abcdefghijklmnopqrstuvwxyz0123456789?"
    assert ar.decode(tokens[0]).count("?") == 2


def test_seeding_is_reproducible(ar):
    a = ar.make_dataset(200, 4, torch.Generator().manual_seed(7))
    b = ar.make_dataset(200, 4, torch.Generator().manual_seed(7))
    c = ar.make_dataset(200, 4, torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_lstm_is_matched_by_parameter_count(ar):
    torch.manual_seed(0)
    stpn = ar.STPNClassifier(11)
    # STPNr H=11 over 37 inputs: D = 48; W, Lambda, Gamma (11x48 each), bias, readout 11->10.
    assert ar.count_parameters(stpn) == 3 * 11 * 48 + 11 + 11 * 10 + 10
    hidden = ar.matching_lstm_hidden(ar.count_parameters(stpn))
    for h in (hidden - 1, hidden, hidden + 1):
        assert ar.lstm_params(h) == ar.count_parameters(ar.LSTMClassifier(h))
    gap = abs(ar.lstm_params(hidden) - ar.count_parameters(stpn))
    assert gap <= abs(ar.lstm_params(hidden - 1) - ar.count_parameters(stpn))
    assert gap <= abs(ar.lstm_params(hidden + 1) - ar.count_parameters(stpn))


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--pairs", "0"], "--pairs"),
        (["--pairs", "27"], "--pairs"),
        (["--epochs", "0"], "--epochs"),
        (["--batch-size", "-1"], "--batch-size"),
        (["--hidden-size", "0"], "--hidden-size"),
        (["--lr", "0"], "--lr"),
        (["--threads", "0"], "--threads"),
        (["--device", "tpu9"], "--device"),
    ],
)
def test_bad_arguments_raise(ar, argv, match):
    with pytest.raises(ValueError, match=match):
        ar.parse_args(argv)


def test_presets(ar):
    demo, full = ar.parse_args([]), ar.parse_args(["--full", "--epochs", "3"])
    assert (full.train_size, full.valid_size, full.test_size) == (100_000, 10_000, 20_000)
    assert full.batch_size == 128 and full.epochs == 3 and full.lr == 1e-3
    assert full.pairs == 3  # the authors' data_art.py: 9 characters, 3 pairs
    assert demo.hidden_size == 11 and demo.train_size < full.train_size


@pytest.fixture
def one_thread():
    """Tiny matrices: intra-op threads only add overhead (badly so on a shared machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("model_cls", ["STPNClassifier", "LSTMClassifier"])
def test_short_training_lowers_the_loss(ar, model_cls, one_thread):
    torch.manual_seed(0)
    data = ar.make_dataset(512, 2, torch.Generator().manual_seed(0))
    model = getattr(ar, model_cls)(11 if model_cls == "STPNClassifier" else 8)
    x, y = ar.one_hot(data[0]), data[1]
    with torch.no_grad():
        before = torch.nn.functional.cross_entropy(model(x), y).item()
    history = ar.train(
        model, data, epochs=6, batch_size=32, lr=3e-3, generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        after = torch.nn.functional.cross_entropy(model(x), y).item()
    assert len(history) == 6 and history[-1]["loss"] < history[0]["loss"]
    assert after < before - 0.1, (before, after)
