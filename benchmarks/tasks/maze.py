"""Maze exploration (Miconi et al.; STPN paper Tables 3, 4): our A2C with STPNModel.

The paper's A2C settings (SPEC section 3: whole-episode Monte-Carlo returns without bootstrap at
the truncation, discount 0.9, value loss 0.1, entropy 0.03, gradient norm clip 4) on a maze
scaled down to fit a CPU: smaller maze, shorter episodes, fewer mazes per iteration, a larger
learning rate and far fewer iterations. Models at equal parameter counts (SPEC section 2):
STPN H=55, LSTM H=47, RNN H=100 as in the paper; Modplast from `hidden_size_for_params`.
"""

from __future__ import annotations

from typing import Any

from benchmarks.tasks.common import ModelSpec, RunResult, model_specs
from benchmarks.tasks.rl import train_and_evaluate, with_model
from rllib_stpn import A2CConfig
from rllib_stpn.model_config import count_parameters, hidden_size_for_params

NAME = "maze"
TITLE = "Maze exploration (A2C)"
METRIC = "inference reward per episode"
METRIC_SCALE = 1.0
CURVE_METRIC = "training return (running mean)"
CURVE_X = "env steps"
HIGHER_IS_BETTER = True

OBS_SIZE, NUM_ACTIONS = 17, 4  # the maze's observation and actions (SPEC section 3)

# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------


def variants(quick: bool) -> list[dict[str, Any]]:
    """Paper: 13x13 maze, 200-step episodes, 512 mazes, lr 1e-4, 50,000 iterations."""
    return [
        {
            "variant": "maze",
            "size": 7,
            "episode_length": 20 if quick else 50,
            "num_mazes": 8 if quick else 64,
            "iterations": 3 if quick else 250,
            "lr": 3e-3,
            "gamma": 0.9,
            "vf_loss_coeff": 0.1,
            "entropy_coeff": 0.03,
            "grad_clip": 4.0,
            "eval_episodes": 8 if quick else 64,
            "anchor": "STPN H=55 (LSTM H=47, RNN H=100 as in the paper)",
        }
    ]


def notes(s: dict[str, Any]) -> str:
    steps = s["iterations"] * s["num_mazes"] * s["episode_length"]
    return (
        f"A {s['size']}x{s['size']} maze, {s['episode_length']}-step episodes, "
        f"{s['num_mazes']} mazes per iteration, lr {s['lr']}, {s['iterations']} iterations "
        f"({steps:,} env steps), against the paper's 13x13 maze, 200-step episodes, 512 "
        "mazes, lr 1e-4 and 50,000 iterations (5.1 billion steps); the rest as in the paper. "
        "Rewards are per episode of this small maze, so they are not comparable in size with "
        f"the paper's. Inference reward: {s['eval_episodes']} episodes after training, weights "
        "frozen, actions sampled from the policy; power over every step of those episodes. "
        "The curves show RLlib's running mean return while training."
    )


def config(spec: ModelSpec, settings: dict[str, Any], seed: int) -> A2CConfig:
    s = settings
    config = (
        A2CConfig()
        .environment(
            "stpn/Maze-v0", env_config={"size": s["size"], "episode_length": s["episode_length"]}
        )
        .env_runners(
            num_env_runners=0,
            num_envs_per_env_runner=s["num_mazes"],
            gym_env_vectorize_mode="vector_entry_point",  # one numpy env for all mazes
            batch_mode="complete_episodes",  # one whole episode per maze and iteration
            rollout_fragment_length=s["episode_length"],
        )
        .training(
            gamma=s["gamma"],
            lambda_=1.0,
            bootstrap_truncated=False,  # Monte-Carlo returns of the whole episode
            vf_loss_coeff=s["vf_loss_coeff"],
            entropy_coeff=s["entropy_coeff"],
            lr=s["lr"],
            grad_clip=s["grad_clip"],
        )
    )
    return with_model(config, spec, seed, max_seq_len=s["episode_length"])  # whole episodes


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------

ROWS = (
    ("STPN", "stpn", "per_synapse"),
    ("LSTM", "lstm", "per_synapse"),
    ("RNN", "rnn", "per_synapse"),
    ("Modplast", "modplast", "per_synapse"),
)
PAPER_HIDDEN = {"stpn": 55, "lstm": 47, "rnn": 100}  # SPEC section 2
PAPER = {  # inference reward per 200-step episode (Table 3) and power per step (Table 4)
    "STPN": ("132.7 ± 1.4", "181.1 ± 2.9"),
    "LSTM": ("119.8 ± 2.1", "649.1 ± 15.3"),
    "RNN": ("97.9 ± 1.9", "330.6 ± 24.3"),
    "Modplast": ("112.2 ± 2.0", "231.6 ± 23.9"),
}


def models(settings: dict[str, Any]) -> list[ModelSpec]:
    target = count_parameters("stpn", OBS_SIZE, 55, num_outputs=NUM_ACTIONS)

    def hidden(core: str, plasticity: str) -> int:
        if core in PAPER_HIDDEN:
            return PAPER_HIDDEN[core]
        return hidden_size_for_params(
            target, core=core, input_size=OBS_SIZE, num_outputs=NUM_ACTIONS
        )

    return model_specs(
        ROWS,
        hidden,
        lambda core, h, pl: count_parameters(core, OBS_SIZE, h, num_outputs=NUM_ACTIONS),
        PAPER,
        "Tables 3, 4",
    )


def run(spec: ModelSpec, settings: dict[str, Any], seed: int) -> RunResult:
    return train_and_evaluate(config(spec, settings, seed), seed, settings)
