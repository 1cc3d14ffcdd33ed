"""Imports cost what they use, and registration with Ray happens on first use or on request.

Each check runs in a fresh interpreter: this process has long imported Ray and registered.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import rllib_stpn

_HEAVY = "sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'torch'})"


def _fresh(code: str, timeout: float = 120) -> str:
    """Run ``code`` in a new interpreter and return its last stdout line."""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("code", "heavy"),
    [
        ("import rllib_stpn", []),
        ("import rllib_stpn; from rllib_stpn import STPN", ["torch"]),
        ("import rllib_stpn.nn", ["torch"]),
        ("from rllib_stpn import STPNState, count_parameters", ["torch"]),
        ("import rllib_stpn.envs", []),
        ("from rllib_stpn.cli import main", []),
    ],
)
def test_light_imports_leave_ray_out(code, heavy):
    assert json.loads(_fresh(f"import sys; {code}; print(__import__('json').dumps({_HEAVY}))")) == (
        heavy
    )


def test_rllib_help_imports_neither_ray_nor_torch():
    """The installed console script (rllib_stpn.__main__:run), run as the shell runs it."""
    script = Path(sys.executable).with_name("rllib")
    if not script.exists():
        pytest.skip("the rllib console script is not installed next to this interpreter")
    done = subprocess.run(
        [sys.executable, "-X", "importtime", str(script), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "train" in done.stdout and "evaluate" in done.stdout
    imported = {
        line.split("|")[2].strip().split(".")[0]
        for line in done.stderr.splitlines()
        if line.startswith("import time:") and line.count("|") == 2
    }
    assert imported, "no -X importtime output"
    assert not imported & {"ray", "torch"}


def test_first_use_of_an_rllib_name_registers():
    code = """
import sys, json
import rllib_stpn
before = 'ray' in sys.modules
rllib_stpn.A2CConfig
from ray.tune.registry import ENV_CREATOR, RLLIB_MODEL, TRAINABLE_CLASS, _global_registry
print(json.dumps([before,
    _global_registry.contains(TRAINABLE_CLASS, "A2C"),
    _global_registry.contains(ENV_CREATOR, "stpn/Maze-v0"),
    _global_registry.contains(RLLIB_MODEL, "stpn")]))
"""
    assert json.loads(_fresh(code)) == [False, True, True, True]


def test_register_is_explicit_and_idempotent():
    code = """
import json
import rllib_stpn
from ray.tune.registry import ENV_CREATOR, TRAINABLE_CLASS, _global_registry
before = _global_registry.contains(TRAINABLE_CLASS, "A2C")
rllib_stpn.register()
rllib_stpn.register()
print(json.dumps([before, _global_registry.contains(TRAINABLE_CLASS, "A2C"),
                  _global_registry.contains(ENV_CREATOR, "stpn/Pong-v0")]))
"""
    assert json.loads(_fresh(code)) == [False, True, True]


def test_env_id_resolves_in_a_remote_env_runner_without_registering_first():
    """A2C registers while it is built, before RLlib looks up the env id in the driver and in
    the env-runner actors it starts (which find it through Tune's registry in Ray's GCS)."""
    code = """
import ray
from rllib_stpn.algorithms.a2c import A2CConfig

ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
config = (
    A2CConfig()
    .environment("stpn/Maze-v0", env_config={"size": 5, "episode_length": 8})
    .env_runners(num_env_runners=1, num_envs_per_env_runner=2, rollout_fragment_length=8)
)
algo = config.build_algo()
result = algo.train()
print(result["env_runners"]["num_env_steps_sampled_lifetime"])
algo.stop()
ray.shutdown()
"""
    assert float(_fresh(code, timeout=300)) >= 16


def test_names_dir_and_unknown_attribute():
    assert set(rllib_stpn.__all__) <= set(dir(rllib_stpn))
    assert {"STPN", "STPNModel", "A2C", "register", "__version__"} <= set(rllib_stpn.__all__)
    for name in rllib_stpn.__all__:
        assert getattr(rllib_stpn, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'STPNModle'"):
        rllib_stpn.STPNModle  # noqa: B018


def test_no_import_circle_between_modules():
    """Every import of the package (top-level, in functions, under TYPE_CHECKING) as a graph
    of modules has no cycle. Importing `a.b.c` imports the packages `a` and `a.b` first, so
    they count too, except a module's own parent packages (being imported already)."""
    import ast
    import graphlib

    root = Path(rllib_stpn.__file__).parent
    modules = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path

    def owner(name: str) -> str:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name

    graph = {}
    for name, path in modules.items():
        named = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                named |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                named |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
        targets = {owner(n) for n in named if n.startswith("rllib_stpn")}
        with_parents = {
            ".".join(m.split(".")[:i]) for m in targets for i in range(1, m.count(".") + 2)
        }
        graph[name] = {m for m in with_parents if m != name and not name.startswith(m + ".")}
    graphlib.TopologicalSorter(graph).prepare()  # raises CycleError naming the circle
