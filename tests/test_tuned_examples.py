"""tuned_examples/: every file parses, carries the paper's settings and builds its algorithm.

Also covers the YAML -> AlgorithmConfig translation (grid search, stacks, key errors) without
training anything.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from rllib_stpn import experiments as ex

EXAMPLES = Path(__file__).resolve().parents[1] / "tuned_examples"

# SPEC section 3: (run, env, core, hidden size, lr (value or schedule), gamma, grad clip,
# parallel envs, rollout length).
PONG = ("A2C", "stpn/Pong-v0")
PENDULUM = ("PPO", "stpn/InvertedPendulum-v0")
MAZE = ("A2C", "stpn/Maze-v0")
PONG_LR_END = [200_000_000, 1e-11]
PEND_LR = [[0, 3e-4], [4_000_000, 1e-11]]
PAPER = {
    "pong-a2c-stpn.yaml": (*PONG, "stpn", 64, [[0, 7e-4], PONG_LR_END], 0.99, 40.0, 64, 50),
    "pong-a2c-lstm.yaml": (*PONG, "lstm", 48, [[0, 1e-4], PONG_LR_END], 0.99, 40.0, 64, 50),
    "invertedpendulum-ppo-stpnf.yaml": (*PENDULUM, "stpnf", 64, PEND_LR, 0.99, None, 1, None),
    "invertedpendulum-ppo-mlp.yaml": (*PENDULUM, "mlp", 64, PEND_LR, 0.99, None, 1, None),
    "invertedpendulum-ppo-lstm.yaml": (*PENDULUM, "lstm", 64, PEND_LR, 0.99, None, 1, None),
    "invertedpendulum-ppo-rnn.yaml": (*PENDULUM, "rnn", 64, PEND_LR, 0.99, None, 1, None),
    "maze-a2c-stpn.yaml": (*MAZE, "stpn", 55, 1e-4, 0.9, 4.0, 512, 200),
    "maze-a2c-lstm.yaml": (*MAZE, "lstm", 47, 1e-4, 0.9, 4.0, 512, 200),
    "maze-a2c-rnn.yaml": (*MAZE, "rnn", 100, 1e-4, 0.9, 4.0, 512, 200),
}
ALL = sorted([*PAPER, "maze-a2c-stpn-quick.yaml"])


def _load(name: str, **override) -> ex.Experiment:
    (exp,) = ex.load_experiments(EXAMPLES / name, config_override=override or None)
    return exp


def test_the_ten_examples_exist():
    assert sorted(p.name for p in EXAMPLES.glob("*.yaml")) == ALL


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_settings(name):
    run, env, core, hidden, lr, gamma, clip, envs, rollout = PAPER[name]
    exp = _load(name)
    assert exp.run == run and exp.env == env
    config = ex.build_algorithm_config(exp)
    assert config.model_config["core"] == core
    assert config.model_config["hidden_size"] == hidden
    assert config.lr == lr
    assert config.gamma == gamma
    assert config.num_envs_per_env_runner * max(1, config.num_env_runners) == envs
    if clip is not None:
        assert config.grad_clip == clip
    if run == "A2C":
        assert config.rollout_fragment_length == rollout
        assert config.lambda_ == 1.0
    if env == "stpn/Maze-v0":  # whole-episode Monte-Carlo returns, BPTT over the episode
        assert config.batch_mode == "complete_episodes" and config.bootstrap_truncated is False
        assert (config.vf_loss_coeff, config.entropy_coeff) == (0.1, 0.03)
        assert config.model_config["max_seq_len"] == 200
        assert exp.stop == {"training_iteration": 50_000}
    if run == "PPO":  # Schulman et al. 2017 MuJoCo settings
        assert config.train_batch_size_per_learner == 2048
        assert (config.num_epochs, config.minibatch_size) == (10, 64)
        assert (config.lambda_, config.clip_param) == (0.95, 0.2)
        assert exp.stop == {ex.STEPS_KEY: 4_000_000}


@pytest.mark.parametrize("name", ALL)
def test_example_builds_its_algorithm(ray_session, name):
    from rllib_stpn.callbacks import SynapticPowerCallback
    from rllib_stpn.rl_module import STPNModel
    from rllib_stpn.state_storage import STATES_KEY, MoveSynapticStateToEpisode

    # One local env: building must stay cheap (no 512 mazes, no 4 Pong runners).
    exp = _load(name, num_env_runners=0, num_envs_per_env_runner=1)
    ex.validate_experiment(exp)
    algo = ex.build_algorithm_config(exp).build_algo()
    try:
        module = algo.get_module()
        assert isinstance(module, STPNModel)
        expected_core = PAPER[name][2] if name in PAPER else "stpn"
        assert module.model_config["core"] == expected_core
        callbacks = algo.config.callbacks_class
        callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
        assert SynapticPowerCallback in callbacks
        # STPN states are stored once per sequence (PPO opts in through the YAML translation,
        # A2C by itself); the LSTM/RNN/MLP cores have nothing to store compactly.
        pieces = algo.env_runner._module_to_env.connectors
        assert any(isinstance(c, MoveSynapticStateToEpisode) for c in pieces)
        if expected_core.startswith("stpn"):
            episodes = algo.env_runner.sample(num_timesteps=5, random_actions=False)
            assert all(STATES_KEY in ep.custom_data for ep in episodes)
    finally:
        algo.stop()


def test_grid_search_in_yaml_is_expanded_and_each_variant_checked():
    data = {
        "sweep": {
            "run": "A2C",
            "env": "stpn/Maze-v0",
            "config": {
                "lr": {"grid_search": [1e-3, 1e-4]},
                "model": {
                    "custom_model": "stpn",
                    "custom_model_config": {"hidden_size": {"grid_search": [4, 8, 16]}},
                },
            },
        }
    }
    (exp,) = ex.parse_experiments(data)
    variants = list(ex._variants(exp.config))
    assert len(variants) == 6
    hidden = {v["model"]["custom_model_config"]["hidden_size"] for v in variants}
    assert hidden == {4, 8, 16}
    param = ex.to_param_space(exp.config, ex.resolve_algorithm("A2C"))
    # Grid searches stay where Tune resolves them; the model moved to the RLModule settings.
    assert param["_model_config"]["hidden_size"] == {"grid_search": [4, 8, 16]}
    assert param["lr"] == {"grid_search": [1e-3, 1e-4]}
    assert sorted(ex._grid_keys(param)) == ["_model_config/hidden_size", "lr"]

    # A bad value in only one grid point is still caught before Tune starts.
    data["sweep"]["config"]["lr"] = {"grid_search": [1e-3, -1.0]}
    (exp,) = ex.parse_experiments(data)
    with pytest.raises(ex.ExperimentError, match="lr"):
        ex.validate_experiment(exp, build_module=False)


def test_cli_overrides_merge_into_the_file():
    (exp,) = ex.load_experiments(
        EXAMPLES / "maze-a2c-stpn.yaml",
        config_override={"lr": 0.01, "model": {"custom_model_config": {"hidden_size": 8}}},
        stop={"training_iteration": 3},
        num_samples=2,
        storage_path="/tmp/somewhere",
    )
    config = ex.build_algorithm_config(exp)
    assert config.lr == 0.01
    assert config.model_config["hidden_size"] == 8
    assert config.model_config["core"] == "stpn"  # untouched keys of the nested dict stay
    assert exp.stop == {"training_iteration": 3}
    assert (exp.num_samples, exp.storage_path) == (2, "/tmp/somewhere")


def test_translation_of_classic_keys():
    algo = ex.resolve_algorithm("PPO")
    param = ex.to_param_space(
        {
            "env": "CartPole-v1",
            "lr_schedule": [[0, 1e-3], [1000, 1e-11]],
            "num_workers": 0,
            "model": {"fcnet_hiddens": [16], "use_lstm": True, "max_seq_len": 8},
        },
        algo,
    )
    # New stack: the schedule lives in `lr`, the model dict is RLlib's DefaultModelConfig.
    assert param["lr"] == [[0, 1e-3], [1000, 1e-11]] and "lr_schedule" not in param
    assert param["_model_config"] == {"fcnet_hiddens": [16], "use_lstm": True, "max_seq_len": 8}
    config = algo.get_default_config().update_from_dict(param)
    assert config.num_env_runners == 0

    # Old stack: `model` is kept as it is (custom_model "stpn" = STPNModelV2).
    old = {
        "env": "CartPole-v1",
        "enable_rl_module_and_learner": False,
        "enable_env_runner_and_connector_v2": False,
        "model": {"custom_model": "stpn", "custom_model_config": {"hidden_size": 8}},
    }
    param = ex.to_param_space(old, algo)
    assert param["model"] == old["model"] and "_rl_module_spec" not in param


@pytest.mark.parametrize(
    "config, message",
    [
        ({"num_env_runner": 0}, "unknown config key 'num_env_runner'.*num_env_runners"),
        ({"model": {"custom_model": "stpn", "fcnet_hiddens": [8]}}, "fcnet_hiddens"),
        ({"model": {"custom_model": "stpn", "custom_model_config": {"cor": "x"}}}, "'cor'.*core"),
        ({"model": {"custom_model": "mine"}}, "custom_model 'mine'"),
        ({"model": {"lstm_size": 8}}, "'lstm_size'.*lstm_cell_size"),
    ],
)
def test_bad_config_is_one_clear_error(config, message):
    with pytest.raises(ex.ExperimentError, match=message) as info:
        ex.to_param_space({"env": "CartPole-v1", **config}, ex.resolve_algorithm("A2C"))
    assert "\n" not in str(info.value)


def test_unknown_run_and_env_suggest_close_names():
    with pytest.raises(ex.ExperimentError, match="unknown run 'PPOO'.*PPO"):
        ex.resolve_algorithm("PPOO")
    with pytest.raises(ex.ExperimentError, match="unknown env 'CartPole-v9'.*CartPole-v1"):
        ex.check_env("CartPole-v9")
    ex.check_env("stpn/Maze-v0")  # registered with Tune and gymnasium on import
    ex.check_env("CartPole-v1")


@pytest.mark.parametrize("name", sorted(PAPER))
def test_trial_names_say_the_core_not_the_env_namespace(name):
    """Tune's own name would be e.g. A2C_stpn_Maze-v0_... for the LSTM (the `stpn/` namespace)."""
    from types import SimpleNamespace

    run, env, core, *_ = PAPER[name]
    exp = _load(name)
    param = ex.to_param_space(next(ex.variants(exp.config)), ex.resolve_algorithm(exp.run))
    trial = SimpleNamespace(trainable_name=run, trial_id="3f2a1_00000", config=param)
    assert ex.trial_name(trial) == f"{run}_{core}_{env.split('/')[1]}_3f2a1_00000"


def test_trial_names_of_other_models():
    from types import SimpleNamespace

    def name(config: dict) -> str:
        return ex.trial_name(SimpleNamespace(trainable_name="PPO", trial_id="t1", config=config))

    assert name({"env": "CartPole-v1"}) == "PPO_CartPole-v1_t1"
    assert name({"env": "CartPole-v1", "_model_config": {"use_lstm": True}}) == (
        "PPO_lstm_CartPole-v1_t1"
    )
    old_stack = {"custom_model": "stpn", "custom_model_config": {"core": "rnn"}}
    assert name({"env": "ALE/Pong-v5", "model": old_stack}) == "PPO_rnn_Pong-v5_t1"
    assert name({"env": "stpn/Maze-v0", "model": {"custom_model": "stpn"}}) == (
        "PPO_stpn_Maze-v0_t1"
    )
