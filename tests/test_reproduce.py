"""benchmarks/reproduce.py: the CFD generator, parameter matching, the CLI, the results page."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from benchmarks import reproduce, supervised
from benchmarks.tasks import art, cfd, report
from rllib_stpn.nn.cores import CORES
from rllib_stpn.rl_module import STPNModel

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------------------------------------
# Continual familiarity detection data
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("R", [1, 3, 6])
def test_cfd_repeats_are_exact_copies_at_distance_r(R):
    x, y = cfd.familiarity_sequences(64, 120, 25, R, 0.5, torch.Generator().manual_seed(R))
    assert x.shape == (64, 120, 25) and y.shape == (64, 120)
    assert x.dtype == torch.float32 and set(x.unique().tolist()) == {-1.0, 1.0}
    assert set(y.unique().tolist()) == {0.0, 1.0}
    assert not y[:, :R].any()  # nothing to repeat yet
    same = (x[:, R:] == x[:, :-R]).all(-1)  # step t equals step t - R
    rep = y[:, R:].bool()
    assert same[rep].all()  # every repeat is the vector R steps back...
    assert not same[~rep].any()  # ...and a new vector is not (2^-25 chance per step)
    assert not (rep & y[:, :-R].bool()).any()  # a repeat is never repeated again


def test_cfd_repeat_frequency_is_p_over_1_plus_p():
    p = 0.5
    _, y = cfd.familiarity_sequences(200, 300, 8, 3, p, torch.Generator().manual_seed(0))
    # Stationary: P(repeat) = p * (1 - P(repeat)); steps 0..2R-1 are transient.
    freq = y[:, 6:].mean().item()
    assert abs(freq - p / (1 + p)) < 0.01, freq
    # Right after the first R steps nothing can block a repeat: frequency p.
    assert abs(y[:, 3:6].mean().item() - p) < 0.03


def test_cfd_extremes_and_seeding():
    gen = torch.Generator
    _, never = cfd.familiarity_sequences(4, 50, 5, 3, 0.0, gen().manual_seed(0))
    assert not never.any()
    # p = 1: blocks of R new vectors alternate with blocks of R repeats.
    _, always = cfd.familiarity_sequences(2, 24, 5, 4, 1.0, gen().manual_seed(0))
    expected = torch.tensor([(t // 4) % 2 for t in range(24)], dtype=torch.float32)
    assert torch.equal(always, expected.expand(2, -1))
    a = cfd.familiarity_sequences(3, 40, 6, 3, 0.5, gen().manual_seed(7))
    b = cfd.familiarity_sequences(3, 40, 6, 3, 0.5, gen().manual_seed(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(ValueError, match="p_repeat"):
        cfd.familiarity_sequences(3, 40, 6, 3, 1.5, gen().manual_seed(7))


# ---------------------------------------------------------------------------------------------
# Equal parameter counts
# ---------------------------------------------------------------------------------------------


def _available(specs):
    return [s for s in specs if s.unavailable is None]


@pytest.mark.parametrize("task", [art, cfd])
def test_supervised_models_match_the_anchor_and_their_real_size(task):
    settings = task.variants(quick=True)[0]
    anchor = task.anchor_params()
    specs = task.models(settings)
    assert {s.core for s in specs if s.unavailable} == {s.core for s in specs} - set(CORES)
    inputs = 37 if task is art else cfd.DIM
    outputs = 10 if task is art else 1
    for spec in _available(specs):
        # Within a few % (one LSTM unit is ~14% of these tiny models; the closest size wins).
        assert abs(spec.params - anchor) / anchor < 0.07, (spec.name, spec.params, anchor)
        for h in (spec.hidden_size - 1, spec.hidden_size + 1):
            other = supervised.num_params(spec.core, inputs, h, outputs, plasticity=spec.plasticity)
            assert abs(other - anchor) >= abs(spec.params - anchor), (spec.name, h)
        model = supervised.SequenceModel(
            spec.core, inputs, spec.hidden_size, outputs, plasticity=spec.plasticity
        )
        assert supervised.trainable_parameters(model) == spec.params, spec.name
    # The anchors themselves: STPNr H=11 (SPEC) and HebbFF H=25 (HebbFF = STPNf uniform).
    assert anchor == (1715 if task is art else 25 * 25 + 25 + 2 + 26)
    if task is cfd and "hebbff" in CORES:
        hebbff = next(s for s in specs if s.core == "hebbff")
        assert hebbff.hidden_size == cfd.HEBBFF_HIDDEN and hebbff.params == anchor


@pytest.mark.parametrize("task_name", ["maze", "pendulum"])
def test_rl_models_count_what_stpnmodel_builds(task_name):
    task = importlib.import_module(f"benchmarks.tasks.{task_name}")
    obs = 17 if task_name == "maze" else 4
    action = gym.spaces.Discrete(4) if task_name == "maze" else gym.spaces.Box(-3, 3, (1,))
    specs = _available(task.models(task.variants(quick=True)[0]))
    for spec in specs:
        module = STPNModel(
            observation_space=gym.spaces.Box(-np.inf, np.inf, (obs,), np.float32),
            action_space=action,
            model_config={"core": spec.core, "hidden_size": spec.hidden_size},
        )
        assert module.num_parameters == spec.params, spec.name
    if task_name == "maze":
        sizes = {s.core: s.hidden_size for s in specs}
        assert (sizes["stpn"], sizes["lstm"], sizes["rnn"]) == (55, 47, 100)  # SPEC section 2
        anchor = next(s.params for s in specs if s.core == "stpn")
        for spec in specs:
            assert abs(spec.params - anchor) / anchor < 0.04, (spec.name, spec.params)


# ---------------------------------------------------------------------------------------------
# A short supervised run learns
# ---------------------------------------------------------------------------------------------


def test_short_cfd_training_beats_chance():
    settings = {
        **cfd.variants(quick=True)[1],  # infinite mode, R=3
        "length": 60,
        "batch": 8,
        "iterations": 150,
        "eval_every": 50,
        "test_sequences": 20,
    }
    spec = next(s for s in cfd.models(settings) if s.name == "STPNr per-synapse")
    result = cfd.run(spec, settings, seed=0)
    chance = 1 - 0.5 / 1.5  # always answering "new"
    assert result.metric > chance + 0.08, result.metric
    assert result.curve_x == [50, 100, 150] and result.curve_metric[-1] > chance
    assert result.power_mean > 0 and result.seconds < 60


# ---------------------------------------------------------------------------------------------
# The command line and the page
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--task", "atari"], ["'atari'", "art, maze, pendulum, cfd, all"]),
        (["--task", "art", "--seeds", "0"], ["--seeds", ">= 1", "0"]),
        (["--task", "art", "--seeds", "two"], ["--seeds", "'two'"]),
        (["--task", "cfd", "--quick", "--out", str(reproduce.DOCS)], ["--quick", "docs"]),
        (["--task", "art", "--jobs", "0"], ["--jobs", "'0'"]),
        (["--task", "art", "--epochs", "3"], ["--epochs"]),
    ],
)
def test_bad_arguments_give_one_line(argv, words, capsys):
    assert reproduce.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for word in words:
        assert word in err, err


def test_compare_orderings_names_every_swap():
    rows = [("A", 90.0, 1.0, 99.0), ("B", 95.0, 1.0, 80.0), ("C", 50.0, 30.0, 60.0)]
    text = report.compare_orderings(rows, True, "Accuracy")
    assert "paper: A > B > C; ours: B > A > C." in text
    assert "B above A (95 vs 90)" in text and "C" not in text.split("differ")[1]
    same = report.compare_orderings([("A", 1.0, 0.1, 2.0), ("B", 3.0, 0.1, 9.0)], False, "Power")
    assert same.endswith("Same ordering as the paper.")


def test_supervised_power_is_the_cores_total():
    torch.manual_seed(0)
    model = supervised.SequenceModel("lstm", 3, 5, 2)
    x = torch.randn(2, 4, 3)
    with torch.no_grad():
        _, power = model.forward_with_power(x)
        _, _, total = model.core(x, None, return_power=True)
    torch.testing.assert_close(power, total)  # not divided by H


def test_per_neuron_results_convert_exactly_to_totals():
    runs = [
        {"seed": 0, "power_mean": 0.5, "power_std": 0.25, "curve_power": [0.75, None], "extra": {}},
        {"seed": 1, "error": "ValueError: x"},
    ]
    old = {"variants": [{"models": [{"spec": {"hidden_size": 4}, "runs": runs}]}]}
    assert report.power_as_totals(old) is True
    run = old["variants"][0]["models"][0]["runs"][0]
    assert (run["power_mean"], run["power_std"], run["curve_power"]) == (2.0, 1.0, [3.0, None])
    assert run["extra"]["power_times_hidden_size"] == 4 and old["power"] == report.POWER_TOTAL
    assert report.power_as_totals(old) is False and run["power_mean"] == 2.0  # once only
    assert "multiplied by the model's H" in report._converted_note(old)


def _check_outputs(out: Path, task, seeds: int) -> dict:
    data = json.loads((out / "results" / f"{task.NAME}.json").read_text())
    assert data["quick"] is True and data["seeds"] == list(range(seeds))
    assert data["power"] == report.POWER_TOTAL
    inv = data["invocations"][-1]
    assert inv["wall_seconds"] > 0 and inv["cpus"] and "--quick" in inv["command"]
    page = (out / "results.md").read_text()
    section = page[page.index(f"reproduce:{task.NAME}:begin") : page.index(f"{task.NAME}:end")]
    for variant in data["variants"]:
        assert variant["settings"]["variant"] in section or len(data["variants"]) == 1
        for model in variant["models"]:
            spec = model["spec"]
            assert f"| {spec['name']} | {spec['core']}" in section
            if spec["unavailable"]:
                assert model["runs"] == []
                continue
            runs = model["runs"]
            assert [r["seed"] for r in runs] == list(range(seeds)), spec["name"]
            assert all(0.0 <= r["metric"] <= 1.0 and r["power_mean"] > 0 for r in runs)
            assert all(len(r["curve_x"]) == len(r["curve_metric"]) > 0 for r in runs)
            assert model["summary"]["metric_mean"] is not None
    for png in (f"{task.NAME}_curves.png", f"{task.NAME}_power.png"):
        path = out / "results" / png
        assert path.read_bytes()[:4] == b"\x89PNG" and path.stat().st_size < 200_000
        assert f"(results/{png})" in section
    assert "**Against the paper.**" in section
    return data


def test_quick_art_and_cfd_write_json_plots_and_page(tmp_path):
    assert reproduce.main(["--task", "art", "--quick", "--seeds", "2", "--out", str(tmp_path)]) == 0
    assert reproduce.main(["--task", "cfd", "--quick", "--seeds", "1", "--out", str(tmp_path)]) == 0
    _check_outputs(tmp_path, art, 2)
    first = _check_outputs(tmp_path, cfd, 1)
    page = (tmp_path / "results.md").read_text()
    assert page.index("reproduce:art:begin") < page.index("reproduce:cfd:begin")
    assert "## maze (not run yet)" in page  # tasks not run are named, not invented

    # --models reruns one model and keeps the others' runs from the JSON.
    argv = ["--task", "cfd", "--quick", "--seeds", "1", "--out", str(tmp_path), "--models", "lstm"]
    assert reproduce.main(argv) == 0
    merged = _check_outputs(tmp_path, cfd, 1)
    assert len(merged["invocations"]) == 2 and merged["invocations"][1]["models"] == ["lstm"]
    for old_v, new_v in zip(first["variants"], merged["variants"]):
        for old_m, new_m in zip(old_v["models"], new_v["models"]):
            kept = old_m["runs"] == new_m["runs"]
            assert kept == (new_m["spec"]["core"] != "lstm"), new_m["spec"]["name"]

    # --report-only redraws from the JSON without training.
    (tmp_path / "results" / "cfd_power.png").unlink()
    assert reproduce.main(["--task", "cfd", "--report-only", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "results" / "cfd_power.png").exists()


def test_unregistered_core_is_reported_not_available(tmp_path, monkeypatch, capsys):
    common = importlib.import_module("benchmarks.tasks.common")
    monkeypatch.setattr(common, "CORES", tuple(c for c in CORES if c != "lstm"))
    specs = art.models(art.variants(quick=True)[0])
    lstm = next(s for s in specs if s.core == "lstm")
    assert lstm.hidden_size is None and "not registered" in lstm.unavailable
    argv = ["--task", "art", "--quick", "--seeds", "1", "--out", str(tmp_path), "--models", "lstm"]
    assert reproduce.main(argv) == 0
    assert "LSTM: not available" in capsys.readouterr().out
    section = (tmp_path / "results.md").read_text()
    assert "| LSTM | lstm | – | – | not available |" in section


def test_two_worker_processes_give_the_same_layout(tmp_path):
    argv = ["--task", "art", "--quick", "--seeds", "2", "--out", str(tmp_path)]
    assert reproduce.main([*argv, "--jobs", "2", "--models", "stpn,rnn"]) == 0
    data = json.loads((tmp_path / "results" / "art.json").read_text())
    assert data["invocations"][0]["jobs"] == 2
    ran = {m["spec"]["core"]: m["runs"] for m in data["variants"][0]["models"] if m["runs"]}
    assert set(ran) == {"stpn", "rnn"}
    assert all([r["seed"] for r in runs] == [0, 1] for runs in ran.values())
    page = (tmp_path / "results.md").read_text()
    assert "| LSTM | lstm | 9 | 1828 | not run |" in page


def test_models_merge_other_seed_counts_and_refuse_other_settings_before_training(
    tmp_path, monkeypatch, capsys
):
    base = ["--task", "art", "--quick", "--out", str(tmp_path)]
    assert reproduce.main([*base, "--seeds", "2", "--models", "stpn"]) == 0
    assert reproduce.main([*base, "--seeds", "1", "--models", "rnn"]) == 0
    data = json.loads((tmp_path / "results" / "art.json").read_text())
    ran = {m["spec"]["core"]: [r["seed"] for r in m["runs"]] for m in data["variants"][0]["models"]}
    assert ran["stpn"] == [0, 1] and ran["rnn"] == [0] and data["seeds"] == [0, 1]
    assert "Seeds: STPN 0, 1; RNN 0." in (tmp_path / "results.md").read_text()

    # Other settings: a one-line error before any run starts, and the JSON is untouched.
    before = (tmp_path / "results" / "art.json").read_text()
    variants = art.variants

    def other_lr(quick):
        return [{**v, "lr": 0.5} for v in variants(quick)]

    monkeypatch.setattr(art, "variants", other_lr)
    monkeypatch.setattr(reproduce, "run_all", lambda *a: pytest.fail("trained before the check"))
    capsys.readouterr()
    assert reproduce.main([*base, "--seeds", "1", "--models", "lstm"]) == 2
    err = capsys.readouterr().err
    assert "settings differ" in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "results" / "art.json").read_text() == before


def test_maze_table_puts_returns_on_the_random_to_oracle_scale():
    from benchmarks.tasks import maze

    settings = {**maze.variants(quick=True)[0], "size": 13, "episode_length": 200}
    title, offset, span, note = maze.metric_scale(settings)
    spec = maze.models(settings)[0].to_json()
    run = {
        "seed": 0,
        "metric": offset + span / 2,
        "power_mean": 1.0,
        "power_std": 0.0,
        "seconds": 1.0,
        "curve_x": [],
        "curve_metric": [],
        "curve_power": [],
    }
    result = {
        "invocations": [{"command": "c", "started": "2026-12-02", "wall_seconds": 1.0}],
        "seeds": [0],
        "variants": [{"settings": settings, "models": [{"spec": spec, "runs": [run]}]}],
    }
    section = report.markdown_section(result, maze, [])
    assert f"| {title} |" in section and "| 0.500 ± 0.000 |" in section
    paper = maze.fraction_of_oracle(maze.PAPER_STPN_RETURN, maze.baselines(13, 200))
    assert f"is at {paper:.3f}" in note and note in section and 0 < paper < 1
