"""A2C on stpn/Pong-v0 with the paper's network: STPN H=64 vs LSTM H=48, same settings on CPU.

Reports environment steps per second, the peak resident memory (VmHWM) of the env runner and
the learner processes, and the env runner's memory per sampled step, two ways: the growth of its
resident memory (RSS) over the timed iterations, and the growth of the numpy data reachable from
the episodes it holds, each divided by the steps sampled in them. RLlib's env runner keeps every
chunk of an ongoing episode until the episode ends (for its episode metrics), so while no Pong
episode ends (they last ~800 steps) that growth is what each sampled step costs. The data figure
is exact; the RSS one also carries the allocator's fragmentation and varies from run to run.
Variants:
- stpn          STPNModel with the plugin's compact state storage (A2C's default);
- stpn-default  the same with RLlib's default path (`compact_states: False`: every step's F kept
                in the episode);
- lstm          STPNModel with the LSTM core.
Each variant runs in a fresh process with its own Ray instance, so the peaks are its own.

    python -m benchmarks.pong_throughput                 # 8 envs x 50 steps, 10 timed iterations
    python -m benchmarks.pong_throughput --envs 64       # the paper's 64 environments
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

# Run in this order: the two the throughput ratio compares next to each other, then the one that
# fills gigabytes of memory (which left the next process slower in some runs).
VARIANTS = {
    "stpn": {"core": "stpn", "hidden_size": 64},
    "lstm": {"core": "lstm", "hidden_size": 48},
    "stpn-default": {"core": "stpn", "hidden_size": 64, "compact_states": False},
}


def _peak_rss_mb(pid: int | None = None) -> tuple[float, float]:
    """(current RSS, peak RSS) of a process in MiB, from /proc."""
    fields = {}
    with open(f"/proc/{pid or os.getpid()}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def _episode_data_bytes(runner) -> int:
    """Bytes of the numpy data reachable from the episodes an env runner holds.

    Roots: its ongoing chunks, the chunks it has returned but keeps for episode metrics, and
    finished episodes not yet reported (private attributes of RLlib's SingleAgentEnvRunner). Each
    array's memory is counted once, through the array that owns it, so a row that pins a whole
    batch counts as the batch.
    """
    import gc
    import types

    import numpy as np

    roots = [runner._ongoing_episodes, runner._ongoing_episodes_for_metrics]
    roots.append(runner._done_episodes_for_metrics)
    seen, owners, total, stack = set(), set(), 0, roots
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, (type, types.ModuleType, types.FunctionType)):
            continue
        seen.add(id(obj))
        if isinstance(obj, np.ndarray):
            while isinstance(obj.base, np.ndarray):
                obj = obj.base
            if id(obj) not in owners:
                owners.add(id(obj))
                total += obj.nbytes
            continue
        stack.extend(gc.get_referents(obj))
    return total


def run_variant(name: str, envs: int, rollout: int, iterations: int, threads: str) -> dict:
    """Build, warm up two iterations, then time `iterations` A2C iterations."""
    import ray
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    from rllib_stpn import A2CConfig, STPNModel
    from rllib_stpn.evaluate import private_logdir_root

    model_config = VARIANTS[name]
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False)
    config = (
        A2CConfig()
        .environment("stpn/Pong-v0")
        .env_runners(
            num_env_runners=1, num_envs_per_env_runner=envs, rollout_fragment_length=rollout
        )
        .learners(num_learners=1)
        .training(lr=7e-4, grad_clip=40.0, gamma=0.99, torch_threads=_threads_setting(threads))
        .rl_module(
            rl_module_spec=RLModuleSpec(
                module_class=STPNModel, model_config={**model_config, "max_seq_len": rollout}
            )
        )
        .debugging(seed=0)
    )
    with private_logdir_root():  # nothing left in ~/ray_results
        algo = config.build_algo()
    runner_pid = algo.env_runner_group.foreach_env_runner(
        lambda r: os.getpid(), local_env_runner=False
    )[0]
    learner_pid = next(iter(algo.learner_group.foreach_learner(lambda learner: os.getpid()))).get()
    held = lambda: algo.env_runner_group.foreach_env_runner(  # noqa: E731
        _episode_data_bytes, local_env_runner=False
    )[0]
    walls = _time_iteration_parts(algo)
    _process_timers(algo, "install")
    # Warm-up: the first calls allocate and compile, and only the second rollout of an episode
    # reaches the steady state of the compact storage (one chunk's start F, one F kept).
    for _ in range(2):
        algo.train()
    runner_rss_warm, _ = _peak_rss_mb(runner_pid)
    held_warm = held()
    steps_per_iter = envs * rollout
    episodes_ended = 0
    for series in walls.values():
        series.clear()
    _process_timers(algo, "clear")
    start = time.perf_counter()
    for _ in range(iterations):
        result = algo.train()
        episodes_ended += result["env_runners"].get("num_episodes", 0)
    elapsed = time.perf_counter() - start
    parts = {f"{k}_s": sum(v) / len(v) for k, v in walls.items()}
    parts.update(_process_timers(algo, "read"))
    runner_rss, runner_peak = _peak_rss_mb(runner_pid)
    held_end = held()
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
        "episode_kb_per_step": (held_end - held_warm) / 1024 / (steps_per_iter * iterations),
        "episodes_ended": episodes_ended,
        "learner_peak_mb": learner_peak,
        "threads": list(config.thread_counts() or (None, None)),
        **parts,
    }


def _time_iteration_parts(algo) -> dict[str, list[float]]:
    """Wall time of each iteration's sampling round and learner update, as A2C calls them."""
    import rllib_stpn.algorithms.a2c as a2c_module

    walls: dict[str, list[float]] = {"sample": [], "update": []}

    def timed(fn, series):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                series.append(time.perf_counter() - start)

        return wrapper

    a2c_module.synchronous_parallel_sample = timed(
        a2c_module.synchronous_parallel_sample, walls["sample"]
    )
    algo.learner_group.update = timed(algo.learner_group.update, walls["update"])
    return walls


class _Timed:
    """Stands in for a callable attribute (a connector pipeline, a module's forward) and adds
    the wall time of each call to `times`; other attributes are the wrapped object's."""

    def __init__(self, wrapped, times: list[float]) -> None:
        self._wrapped, self._times = wrapped, times

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self._wrapped(*args, **kwargs)
        finally:
            self._times.append(time.perf_counter() - start)

    def __getattr__(self, name):
        return getattr(self._wrapped, name)


# Where each process-side timer sits: (object path on the env runner or learner, attribute).
_RUNNER_PARTS = {
    "inference": ("module", "forward_exploration"),
    "env_to_module": (None, "_env_to_module"),
    "module_to_env": (None, "_module_to_env"),
}
_LEARNER_PARTS = {"learner_connector": (None, "_learner_connector"), "learner": (None, "update")}


def _install_timers(owner, parts: dict) -> None:
    owner._bench_times = {name: [] for name in parts}
    for name, (path, attr) in parts.items():
        target = owner if path is None else getattr(owner, path)
        setattr(target, attr, _Timed(getattr(target, attr), owner._bench_times[name]))


def _clear_timers(owner) -> None:
    for series in owner._bench_times.values():
        series.clear()


def _read_timers(owner) -> dict[str, float]:
    return {name: sum(v) / len(v) for name, v in owner._bench_times.items() if v}


def _process_timers(algo, action: str):
    """Install, clear or read the timers in the remote env runner and learner processes."""
    runner_fn = {"install": lambda r: _install_timers(r, _RUNNER_PARTS)}.get(
        action, _clear_timers if action == "clear" else _read_timers
    )
    learner_fn = {"install": lambda ln: _install_timers(ln, _LEARNER_PARTS)}.get(
        action, _clear_timers if action == "clear" else _read_timers
    )
    runner = algo.env_runner_group.foreach_env_runner(runner_fn, local_env_runner=False)[0]
    learner = [r.get() for r in algo.learner_group.foreach_learner(learner_fn)][0]
    if action != "read":
        return None
    return {
        "inference_ms": 1e3 * runner["inference"],
        "env_to_module_ms": 1e3 * runner["env_to_module"],
        "module_to_env_ms": 1e3 * runner["module_to_env"],
        "learner_connector_ms": 1e3 * learner["learner_connector"],
        "learner_ms": 1e3 * learner["learner"],
    }


def _print_table(results: dict, columns: list[tuple[str, str, str, str]]) -> None:
    print("".join(f"{title:{align}}" for title, _, align, _ in columns))
    for r in results.values():
        print("".join(f"{r[key]:{align}{fmt}}" for _, key, align, fmt in columns))


def _threads_setting(text: str) -> str | int | None:
    """--torch-threads: "auto" (A2C's default), "ray" (Ray's one per CPU) or an int >= 1."""
    if text == "auto":
        return "auto"
    if text == "ray":
        return None
    return int(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", type=int, default=8, help="environments (the paper used 64)")
    parser.add_argument("--rollout", type=int, default=50, help="rollout length = max_seq_len")
    parser.add_argument("--iterations", type=int, default=10, help="timed iterations")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated")
    parser.add_argument(
        "--torch-threads",
        default="auto",
        help="A2C's torch_threads for every variant: auto (default), ray (Ray's one per CPU) or N",
    )
    parser.add_argument("--out", help="also write the results as JSON to this file")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one variant, print JSON
    args = parser.parse_args()
    for key in ("envs", "rollout", "iterations"):
        if getattr(args, key) < 1:
            parser.error(f"--{key} must be >= 1, got {getattr(args, key)}")
    threads = args.torch_threads
    if threads not in ("auto", "ray") and not (threads.isdigit() and int(threads) >= 1):
        parser.error(f"--torch-threads must be auto, ray or an int >= 1, got {threads!r}")
    if args.one:
        result = run_variant(args.one, args.envs, args.rollout, args.iterations, threads)
        print("RESULT " + json.dumps(result), flush=True)
        # Ray Train's learner workers try to shut down again at interpreter exit, after
        # ray.shutdown(), and fail there; the measurement is complete, so leave directly.
        os._exit(0)
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; valid: {list(VARIANTS)}")

    results = {}
    started, loads = time.strftime("%Y-%m-%dT%H:%M:%S%z"), [os.getloadavg()[0]]
    for name in names:
        cmd = [sys.executable, __file__, "--one", name, "--envs", str(args.envs)]
        cmd += ["--rollout", str(args.rollout), "--iterations", str(args.iterations)]
        cmd += ["--torch-threads", threads]
        out = subprocess.run(cmd, capture_output=True, text=True)
        lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
        if out.returncode != 0 or not lines:
            sys.exit(f"variant {name} failed:\n{out.stderr[-3000:]}")
        results[name] = json.loads(lines[-1][len("RESULT ") :])
        loads.append(os.getloadavg()[0])
    if args.out:
        with open(args.out, "w") as f:
            json.dump(
                {
                    "command": "python -m benchmarks.pong_throughput " + " ".join(sys.argv[1:]),
                    "started": started,
                    "load_1min": loads,
                    "cpus": os.cpu_count(),
                    "results": results,
                },
                f,
                indent=1,
            )

    print(f"A2C on stpn/Pong-v0, {args.envs} envs x {args.rollout} steps, CPU")
    learner_t, runner_t = next(iter(results.values()))["threads"]
    print(f"torch threads: {learner_t} per learner, {runner_t} per env runner (--torch-threads)")
    print("env runner per sampled step: growth of its RSS, and of the episode data it holds")
    columns = [
        ("variant", "variant", "<14", ""),
        ("params", "parameters", ">9", ""),
        ("steps/s", "env_steps_per_s", ">9", ".1f"),
        ("RSS KiB/step", "runner_kb_per_step", ">14", ".1f"),
        ("data KiB/step", "episode_kb_per_step", ">15", ".1f"),
        ("runner peak MiB", "runner_peak_mb", ">17", ".0f"),
        ("learner peak MiB", "learner_peak_mb", ">18", ".0f"),
        ("episodes ended", "episodes_ended", ">16", ""),
    ]
    _print_table(results, columns)

    print("\nwhere the time goes: per iteration, the sampling round and the learner update (wall")
    print("s, as A2C calls them); per sampled step, the module's forward and the env-to-module and")
    print("module-to-env connectors in the env runner; per update, the learner's connector and its")
    print("whole update in the learner process (ms, means over the timed iterations)")
    _print_table(
        results,
        [
            ("variant", "variant", "<14", ""),
            ("sample s", "sample_s", ">10", ".3f"),
            ("update s", "update_s", ">10", ".3f"),
            ("infer ms", "inference_ms", ">10", ".2f"),
            ("e2m ms", "env_to_module_ms", ">9", ".2f"),
            ("m2e ms", "module_to_env_ms", ">9", ".2f"),
            ("lconn ms", "learner_connector_ms", ">10", ".1f"),
            ("learner ms", "learner_ms", ">12", ".1f"),
        ],
    )

    def ratio(a: dict, b: dict, key: str) -> str:
        return f"{a[key] / b[key]:.2f}x"

    if "stpn" in results and "lstm" in results:
        s, lstm = results["stpn"], results["lstm"]
        print(f"throughput STPN / LSTM: {ratio(s, lstm, 'env_steps_per_s')}")
        for r in (s, lstm):
            r["connectors_ms"] = r["env_to_module_ms"] + r["module_to_env_ms"]
        print(
            f"STPN / LSTM: sampling {ratio(s, lstm, 'sample_s')}, learner update "
            f"{ratio(s, lstm, 'update_s')} (in the learner {ratio(s, lstm, 'learner_ms')}), "
            f"learner connector "
            f"{ratio(s, lstm, 'learner_connector_ms')}, connectors per sampled step "
            f"{ratio(s, lstm, 'connectors_ms')}, inference per sampled step "
            f"{ratio(s, lstm, 'inference_ms')}"
        )
        print(f"learner peak memory STPN / LSTM: {ratio(s, lstm, 'learner_peak_mb')}")
        print(
            f"env-runner memory per sampled step STPN / LSTM: RSS "
            f"{ratio(s, lstm, 'runner_kb_per_step')}, episode data "
            f"{ratio(s, lstm, 'episode_kb_per_step')}; peak {ratio(s, lstm, 'runner_peak_mb')}"
        )
    if "stpn" in results and "stpn-default" in results:
        s, d = results["stpn"], results["stpn-default"]
        print(
            f"compact / RLlib default path: env-runner memory per sampled step RSS "
            f"{ratio(s, d, 'runner_kb_per_step')}, episode data "
            f"{ratio(s, d, 'episode_kb_per_step')}; peak {ratio(s, d, 'runner_peak_mb')}; "
            f"throughput {ratio(s, d, 'env_steps_per_s')}"
        )


if __name__ == "__main__":
    main()
