"""A2C on stpn/Pong-v0 with the paper's network: STPN H=64 vs LSTM H=48, same settings on CPU.

Reports environment steps per second, the peak resident memory (VmHWM) of the env runner and
the learner processes, and the env runner's memory per sampled step: the growth of its resident
memory over the timed iterations divided by the steps sampled in them. RLlib's env runner keeps
every chunk of an ongoing episode until the episode ends (for its episode metrics), so while no
Pong episode ends (they last ~800 steps) that growth is what each sampled step costs. Variants:
- stpn          STPNModel with the plugin's compact state storage (the default);
- stpn-default  the same with RLlib's default path (every step's F kept in the episode);
- lstm          STPNModel with the LSTM core.
Each variant runs in a fresh process with its own Ray instance, so the peaks are its own.

    python benchmarks/pong_throughput.py                 # 8 envs x 50 steps, 5 timed iterations
    python benchmarks/pong_throughput.py --envs 64       # the paper's 64 environments
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

VARIANTS = {
    "stpn": ({"core": "stpn", "hidden_size": 64}, True),
    "stpn-default": ({"core": "stpn", "hidden_size": 64}, False),
    "lstm": ({"core": "lstm", "hidden_size": 48}, True),
}


def _peak_rss_mb(pid: int | None = None) -> tuple[float, float]:
    """(current RSS, peak RSS) of a process in MiB, from /proc."""
    fields = {}
    with open(f"/proc/{pid or os.getpid()}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def run_variant(name: str, envs: int, rollout: int, iterations: int) -> dict:
    """Build, warm up one iteration, then time `iterations` A2C iterations."""
    import ray
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    from rllib_stpn import A2CConfig, STPNModel

    model_config, compact = VARIANTS[name]
    os.environ["RLLIB_STPN_COMPACT_STATES"] = "1" if compact else "0"  # inherited by Ray workers
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False)
    config = (
        A2CConfig()
        .environment("stpn/Pong-v0")
        .env_runners(
            num_env_runners=1, num_envs_per_env_runner=envs, rollout_fragment_length=rollout
        )
        .learners(num_learners=1)
        .training(lr=7e-4, grad_clip=40.0, gamma=0.99)
        .rl_module(
            rl_module_spec=RLModuleSpec(
                module_class=STPNModel, model_config={**model_config, "max_seq_len": rollout}
            )
        )
        .debugging(seed=0)
    )
    algo = config.build_algo()
    runner_pid = algo.env_runner_group.foreach_env_runner(
        lambda r: os.getpid(), local_env_runner=False
    )[0]
    learner_pid = next(iter(algo.learner_group.foreach_learner(lambda learner: os.getpid()))).get()
    algo.train()  # warm-up: first calls allocate and compile
    runner_rss_warm, _ = _peak_rss_mb(runner_pid)
    steps_per_iter = envs * rollout
    episodes_ended = 0
    start = time.perf_counter()
    for _ in range(iterations):
        result = algo.train()
        episodes_ended += result["env_runners"].get("num_episodes", 0)
    elapsed = time.perf_counter() - start
    runner_rss, runner_peak = _peak_rss_mb(runner_pid)
    _, learner_peak = _peak_rss_mb(learner_pid)
    params = algo.get_module().num_parameters
    algo.stop()
    ray.shutdown()
    return {
        "variant": name,
        "parameters": params,
        "env_steps_per_s": steps_per_iter * iterations / elapsed,
        "runner_peak_mb": runner_peak,
        "runner_kb_per_step": (runner_rss - runner_rss_warm) * 1024 / (steps_per_iter * iterations),
        "episodes_ended": episodes_ended,
        "learner_peak_mb": learner_peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", type=int, default=8, help="environments (the paper used 64)")
    parser.add_argument("--rollout", type=int, default=50, help="rollout length = max_seq_len")
    parser.add_argument("--iterations", type=int, default=5, help="timed iterations")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one variant, print JSON
    args = parser.parse_args()
    for key in ("envs", "rollout", "iterations"):
        if getattr(args, key) < 1:
            parser.error(f"--{key} must be >= 1, got {getattr(args, key)}")
    if args.one:
        result = run_variant(args.one, args.envs, args.rollout, args.iterations)
        print("RESULT " + json.dumps(result), flush=True)
        # Ray Train's learner workers try to shut down again at interpreter exit, after
        # ray.shutdown(), and fail there; the measurement is complete, so leave directly.
        os._exit(0)
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; valid: {list(VARIANTS)}")

    results = {}
    for name in names:
        cmd = [sys.executable, __file__, "--one", name, "--envs", str(args.envs)]
        cmd += ["--rollout", str(args.rollout), "--iterations", str(args.iterations)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
        if out.returncode != 0 or not lines:
            sys.exit(f"variant {name} failed:\n{out.stderr[-3000:]}")
        results[name] = json.loads(lines[-1][len("RESULT ") :])

    print(f"A2C on stpn/Pong-v0, {args.envs} envs x {args.rollout} steps, CPU")
    header = f"{'variant':<14}{'params':>9}{'steps/s':>10}{'runner peak MiB':>16}"
    header += f"{'runner KiB/step':>16}{'learner peak MiB':>17}{'episodes ended':>16}"
    print(header)
    for r in results.values():
        print(
            f"{r['variant']:<14}{r['parameters']:>9}{r['env_steps_per_s']:>10.1f}"
            f"{r['runner_peak_mb']:>16.0f}{r['runner_kb_per_step']:>16.1f}"
            f"{r['learner_peak_mb']:>17.0f}{r['episodes_ended']:>16}"
        )
    if "stpn" in results and "lstm" in results:
        s, lstm = results["stpn"], results["lstm"]
        print(f"throughput STPN / LSTM: {s['env_steps_per_s'] / lstm['env_steps_per_s']:.2f}x")
        ratio = s["runner_kb_per_step"] / lstm["runner_kb_per_step"]
        print(f"env-runner memory per sampled step STPN / LSTM: {ratio:.2f}x")
        ratio = s["runner_peak_mb"] / lstm["runner_peak_mb"]
        print(f"env-runner peak memory STPN / LSTM: {ratio:.2f}x")
    if "stpn" in results and "stpn-default" in results:
        s, d = results["stpn"], results["stpn-default"]
        print(
            f"compact / RLlib default path: env-runner memory per sampled step "
            f"{s['runner_kb_per_step'] / d['runner_kb_per_step']:.2f}x, peak "
            f"{s['runner_peak_mb'] / d['runner_peak_mb']:.2f}x, "
            f"throughput {s['env_steps_per_s'] / d['env_steps_per_s']:.2f}x"
        )


if __name__ == "__main__":
    main()
