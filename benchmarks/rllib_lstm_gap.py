"""PPO on StatelessCartPole: RLlib's own LSTM module beside STPNModel's `lstm` core, in the
configuration equal to RLlib's (`rllib_lstm_model_config`) and in the plain one a new user
writes (ReLU MLP encoder, value head on the policy's LSTM). docs/fidelity.md, "STPNModel as
RLlib's default LSTM module".

    .venv/bin/python -m benchmarks.rllib_lstm_gap --iterations 10 --seeds 0

"stpn_equal" starts from the weights RLlib's arm of the same seed started from (loaded with
`load_rllib_lstm_weights`), so the two differ only in the module code; run "rllib" first.
With --vf-share-layers the two train identically; without, RLlib's env runners never receive
the critic LSTM's weights (docs/fidelity.md), so the runs part after the first iteration.
"""

from __future__ import annotations

import argparse
import copy

import numpy as np

H = 32
RLLIB_MODEL = {"use_lstm": True, "lstm_cell_size": H, "fcnet_hiddens": [H], "max_seq_len": 20}
PLAIN = {"core": "lstm", "hidden_size": H, "encoder": "mlp", "encoder_hiddens": [H]}
ARMS = ("rllib", "stpn_equal", "stpn_plain")


def _config(arm: str, seed: int):
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec
    from ray.rllib.examples.envs.classes.stateless_cartpole import StatelessCartPole

    from rllib_stpn.rl_module import STPNModel
    from rllib_stpn.rllib_lstm import rllib_lstm_model_config

    config = (
        PPOConfig()
        .environment(StatelessCartPole)
        .env_runners(num_env_runners=0, num_envs_per_env_runner=8)
        .training(train_batch_size_per_learner=1000, minibatch_size=250, num_epochs=6, lr=1e-3)
        .reporting(metrics_num_episodes_for_smoothing=20)
        .debugging(seed=seed)
    )
    if arm == "rllib":
        return config.rl_module(model_config=RLLIB_MODEL)
    # What PPO hands RLlib's module for RLLIB_MODEL (its injected vf_share_layers=False too).
    rllib_config = PPOConfig().rl_module(model_config=RLLIB_MODEL).model_config
    model = rllib_lstm_model_config(rllib_config) if arm == "stpn_equal" else PLAIN
    spec = RLModuleSpec(module_class=STPNModel, model_config={**model, "max_seq_len": 20})
    return config.rl_module(rl_module_spec=spec)


def main() -> None:
    import ray

    from rllib_stpn.evaluate import private_logdir_root

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    p.add_argument(
        "--vf-share-layers",
        action="store_true",
        help="RLlib's module with one LSTM for both heads (DefaultModelConfig's default)",
    )
    args = p.parse_args()
    if args.vf_share_layers:
        RLLIB_MODEL["vf_share_layers"] = True
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    with private_logdir_root():  # nothing left in ~/ray_results
        _run(args)
    ray.shutdown()


def _run(args: argparse.Namespace) -> None:
    from ray.rllib.core import DEFAULT_MODULE_ID

    from rllib_stpn.rllib_lstm import load_rllib_lstm_weights

    rllib_init = {}  # seed -> RLlib's initial module
    for arm in args.arms:
        for seed in args.seeds:
            algo = _config(arm, seed).build_algo()
            if arm == "rllib":
                # The learner's module: env runners never get RLlib's critic weights.
                (result,) = algo.learner_group.foreach_learner(
                    lambda learner: copy.deepcopy(learner.module[DEFAULT_MODULE_ID])
                )
                rllib_init[seed] = result.get()
            elif arm == "stpn_equal" and seed in rllib_init:
                init = rllib_init[seed]
                algo.learner_group.foreach_learner(
                    lambda learner, init=init: load_rllib_lstm_weights(
                        learner.module[DEFAULT_MODULE_ID], init
                    )
                )
                algo.env_runner_group.foreach_env_runner(
                    lambda runner, init=init: load_rllib_lstm_weights(runner.module, init)
                )
            returns = [
                algo.train()["env_runners"]["episode_return_mean"] for _ in range(args.iterations)
            ]
            algo.stop()
            last = float(np.mean(returns[-3:]))
            print(
                f"{arm:11s} seed {seed}: last-3 mean return {last:.1f}; curve "
                + " ".join(f"{r:.1f}" for r in returns),
                flush=True,
            )


if __name__ == "__main__":
    main()
