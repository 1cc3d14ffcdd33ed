"""Maze exploration (Miconi et al.; STPN paper Tables 3, 4): our A2C with STPNModel.

Settings follow the authors' code (Maze/Scripts/run_maze.py and Maze/config/STPN_Maze_h55.json
of github NeuromorphicComputing/stpn; docs/fidelity.md, "Tuned examples"): the 13x13 maze with
200-step episodes, whole-episode Monte-Carlo returns without bootstrap, discount 0.9, value
loss 0.1, the exploration penalty 0.03 * sum_a pi(a|s)^2 (their "bent"), every term averaged
over the steps, Adam eps 1e-4, gradient norm clip 4; the STPN with F clamped to [-1, 1] and
normalised after the Hebbian update. Scaled down to a CPU: fewer mazes per iteration, a larger
learning rate, far fewer iterations. Models at equal parameter counts (SPEC section 2): STPN
H=55, LSTM H=47, RNN H=100 as in the paper; Modplast from `hidden_size_for_params`.

Two reference agents put returns on one scale (`baselines`): a random policy (uniform actions)
and an oracle that knows the reward cell and walks a shortest path to it after every start and
teleport. A return R is reported also as the fraction (R - random) / (oracle - random).

    python -m benchmarks.tasks.maze [--episodes N]     # measure the random and oracle returns
"""

from __future__ import annotations

import argparse
import functools
from collections import deque
from typing import Any

import numpy as np
from rllib_stpn.envs.maze import MOVES, MazeVectorEnv, maze_layout

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
PAPER_STPN_RETURN = 132.7  # Table 3, STPN, inference reward per 200-step episode (13x13 maze)
BASELINE_EPISODES = 10_240  # 20 batches of 512 mazes (the authors' batch)

# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------

# The authors' STPN options in the maze (STPN_Maze_h55.json: plastic_weight_clamp_val 1.0,
# plastic_weight_norm time "post" after the weight_norm of Algorithm 1).
STPN_OPTIONS = {"f_clamp": 1.0, "post_update_norm": True}


def variants(quick: bool) -> list[dict[str, Any]]:
    """Authors: 13x13 maze, 200-step episodes, 512 mazes, lr 1e-4, 50,000 iterations."""
    return [
        {
            "variant": "maze",
            "size": 13,
            "episode_length": 200,
            "num_mazes": 4 if quick else 64,
            "iterations": 2 if quick else 150,
            "lr": 3e-3,
            "gamma": 0.9,
            "vf_loss_coeff": 0.1,
            "entropy_coeff": 0.03,
            "exploration_loss": "sum_squared_probs",
            "loss_reduction": "mean",
            "adam_epsilon": 1e-4,
            "grad_clip": 4.0,
            "eval_episodes": 8 if quick else 64,
            "anchor": "STPN H=55 (LSTM H=47, RNN H=100 as in the paper)",
        }
    ]


def notes(s: dict[str, Any]) -> str:
    steps = s["iterations"] * s["num_mazes"] * s["episode_length"]
    base = baselines(s["size"], s["episode_length"])
    paper = fraction_of_oracle(PAPER_STPN_RETURN, baselines(13, 200))  # the paper's geometry
    who = "The authors'" if (s["size"], s["episode_length"]) == (13, 200) else "A"
    recipe = (
        'the loss, the STPN options and the rest as in their code (docs/fidelity.md, "Tuned '
        'examples")'
        if "exploration_loss" in s
        else "an entropy bonus and no STPN options (the paper's text)"
    )
    return (
        f"{who} {s['size']}x{s['size']} maze and "
        f"{s['episode_length']}-step episodes, {s['num_mazes']} mazes per iteration, lr "
        f"{s['lr']}, {s['iterations']} iterations ({steps:,} env steps), against the authors' "
        "13x13 maze, 200-step episodes, 512 mazes, lr 1e-4 and 50,000 iterations (5.1 billion "
        f"steps); {recipe}. Inference reward: {s['eval_episodes']} episodes after training, "
        "weights frozen, actions sampled from the policy; power over every step of those "
        "episodes. The curves show RLlib's running mean return while training. Scale in this "
        f"geometry: a random policy scores {base['random']:.1f} ± {base['random_std']:.1f} per "
        f"episode, an oracle that walks shortest paths to the reward {base['oracle']:.1f} ± "
        f"{base['oracle_std']:.1f} ({base['episodes']:,} episodes each, `python -m "
        "benchmarks.tasks.maze`); a return R is (R - random) / (oracle - random) of the way. "
        f"The paper's STPN ({PAPER_STPN_RETURN} in the 13x13 maze) is {paper:.2f} of the way."
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
            exploration_loss=s["exploration_loss"],
            loss_reduction=s["loss_reduction"],
            adam_epsilon=s["adam_epsilon"],
            lr=s["lr"],
            grad_clip=s["grad_clip"],
        )
    )
    extra = STPN_OPTIONS if spec.core.startswith("stpn") else None
    return with_model(config, spec, seed, max_seq_len=s["episode_length"], extra_model_config=extra)


# ---------------------------------------------------------------------------------------------
# Reference agents: random and oracle
# ---------------------------------------------------------------------------------------------


def shortest_distances(size: int) -> np.ndarray:
    """(size², size²) BFS distances in moves between flat cells (row * size + col); -1 where
    either cell is a wall."""
    walls = maze_layout(size).ravel()
    n = size * size
    dist = np.full((n, n), -1, dtype=np.int64)
    for target in np.flatnonzero(~walls):
        dist[target, target] = 0
        queue = deque([int(target)])
        while queue:
            cell = queue.popleft()
            for dr, dc in MOVES:
                nxt = cell + dr * size + dc
                if not walls[nxt] and dist[target, nxt] < 0:
                    dist[target, nxt] = dist[target, cell] + 1
                    queue.append(nxt)
    return dist


def oracle_actions(env: MazeVectorEnv, dist: np.ndarray) -> np.ndarray:
    """For every maze, a move that brings the agent one step closer to its reward cell (the
    first such move in up, down, left, right order)."""
    size = env.params.size
    pos = env.agent_cells @ np.array([size, 1])
    reward = env.reward_cells @ np.array([size, 1])
    walls = env.params.walls.ravel()
    best = np.full(len(pos), -1)
    for a, (dr, dc) in reversed(list(enumerate(MOVES))):  # lowest index wins ties
        nxt = pos + dr * size + dc
        closer = ~walls[nxt] & (dist[reward, nxt] == dist[reward, pos] - 1)
        best = np.where(closer, a, best)
    # The agent starts an episode at the centre, which may be the reward cell: any move.
    return np.where(best < 0, 0, best)


@functools.lru_cache(maxsize=8)
def baselines(
    size: int = 13, episode_length: int = 200, episodes: int = BASELINE_EPISODES, seed: int = 0
) -> dict[str, float]:
    """Mean and std of the per-episode return of the random and the oracle agent, measured
    over `episodes` episodes each (batches of 512 mazes, seeded)."""
    dist = shortest_distances(size)
    out: dict[str, float] = {"episodes": episodes}
    for agent in ("random", "oracle"):
        rng = np.random.default_rng(seed)
        returns: list[np.ndarray] = []
        batch = 0
        while sum(len(r) for r in returns) < episodes:
            n = min(512, episodes - sum(len(r) for r in returns))
            env = MazeVectorEnv(n, size=size, episode_length=episode_length)
            env.reset(seed=seed + 1000 * batch)
            total = np.zeros(n)
            for _ in range(episode_length):
                if agent == "random":
                    actions = rng.integers(NUM_ACTIONS, size=n)
                else:
                    actions = oracle_actions(env, dist)
                _, rewards, _, _, _ = env.step(actions)
                total += rewards
            returns.append(total)
            batch += 1
        all_returns = np.concatenate(returns)
        out[agent] = float(all_returns.mean())
        out[f"{agent}_std"] = float(all_returns.std())
    return out


def fraction_of_oracle(value: float, base: dict[str, float]) -> float:
    """(value - random) / (oracle - random): 0 for the random agent, 1 for the oracle."""
    return (value - base["random"]) / (base["oracle"] - base["random"])


def metric_scale(settings: dict[str, Any]) -> tuple[str, float, float, str | None]:
    """The results table's extra column: returns as the fraction of the way from the random to
    the oracle agent in this run's geometry, (R - offset) / span, and a sentence placing the
    paper's STPN on that scale where the geometry is the paper's (else None)."""
    base = baselines(settings["size"], settings["episode_length"])
    span = base["oracle"] - base["random"]
    note = None
    if (settings["size"], settings["episode_length"]) == (13, 200):
        paper = fraction_of_oracle(PAPER_STPN_RETURN, base)
        note = (
            f"Column random → oracle: (R - {base['random']:.2f}) / {span:.2f}, the fraction of "
            f"the way from a random policy to the oracle; on it the paper's STPN "
            f"({PAPER_STPN_RETURN}) is at {paper:.3f}."
        )
    return "random → oracle", base["random"], span, note


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


def main() -> None:
    parser = argparse.ArgumentParser(description="Random and oracle returns in the maze.")
    parser.add_argument("--episodes", type=int, default=BASELINE_EPISODES)
    parser.add_argument("--size", type=int, default=13)
    parser.add_argument("--episode-length", type=int, default=200)
    args = parser.parse_args()
    base = baselines(args.size, args.episode_length, args.episodes)
    print(
        f"maze {args.size}x{args.size}, {args.episode_length}-step episodes, "
        f"{base['episodes']:,} episodes per agent"
    )
    for agent in ("random", "oracle"):
        print(f"{agent:>7}: {base[agent]:7.2f} ± {base[agent + '_std']:.2f} per episode")
    paper = fraction_of_oracle(PAPER_STPN_RETURN, base)
    print(f"paper's STPN {PAPER_STPN_RETURN}: {paper:.3f} of the way from random to oracle")


if __name__ == "__main__":
    main()
