"""Checks of RLlib checkpoints before anything restores them, and a checked restore.

RLlib restores what a checkpoint holds without asking whether it fits: a missing component
directory is skipped (the weights stay random), and a ``module_state.pkl`` holding some other
pickle is loaded with ``strict=False`` semantics or fails deep inside a trial. Here every pickle
and JSON file must load, and each module's weights must have exactly the keys and shapes of the
module the checkpoint itself describes (built from its ``class_and_ctor_args.pkl``). A problem is
one :class:`ExperimentError` line, which the ``rllib`` command prints and exits with 2.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rllib_stpn.experiments.errors import ExperimentError, one_line

__all__ = [
    "CHECKPOINT_MARKER",
    "check_checkpoint",
    "check_resume",
    "checkpoint_problem",
    "find_checkpoint",
    "module_state_problem",
    "restore_algorithm",
]

CHECKPOINT_MARKER = "rllib_checkpoint.json"
MODULES_DIR = "learner_group/learner/rl_module"
# Files (alternatives separated by "|") an Algorithm checkpoint needs for its weights.
_REQUIRED_NEW_STACK = ("algorithm_state.pkl|algorithm_state.msgpack", MODULES_DIR)
_REQUIRED_OLD_STACK = ("algorithm_state.pkl|algorithm_state.msgpack", "policies")


def _load_state(path: Path) -> Any:
    if path.suffix == ".pkl":
        with open(path, "rb") as f:
            return pickle.load(f)
    import msgpack
    import msgpack_numpy

    return msgpack.unpackb(path.read_bytes(), object_hook=msgpack_numpy.decode)


def module_state_problem(module_dir: Path) -> str | None:
    """Whether ``module_dir`` (one RLModule's checkpoint) holds weights of that very module.

    The module is built from the directory's own constructor arguments; its state dict's keys
    and shapes must match the saved ``module_state`` exactly. Returns what is wrong, or None.
    """
    state_files = sorted(module_dir.glob("module_state.*"))
    if not state_files:
        return f"no module weights (module_state.*) in {module_dir.name}"
    try:
        with open(module_dir / "class_and_ctor_args.pkl", "rb") as f:
            info = pickle.load(f)
        args, kwargs = info["ctor_args_and_kwargs"]
        module = info["class"](*args, **kwargs)
        expected = {k: tuple(v.shape) for k, v in module.get_state(inference_only=False).items()}
    except Exception as err:
        return f"the module of {module_dir.name} cannot be rebuilt ({one_line(err)})"
    try:
        saved = _load_state(state_files[0])
    except Exception as err:
        return f"{state_files[0].name} of {module_dir.name} cannot be read ({one_line(err)})"
    where = f"{state_files[0].name} of {module_dir.name}"
    if not isinstance(saved, Mapping):
        return f"{where} holds a {type(saved).__name__}, not the module's weights"
    missing = sorted(set(expected) - set(saved))
    extra = sorted(set(saved) - set(expected))
    if missing or extra:
        what = f"missing {missing[0]!r}" if missing else f"unexpected {extra[0]!r}"
        return (
            f"{where} does not match the module ({what}; {len(missing)} missing, "
            f"{len(extra)} unexpected of {len(expected)} weights)"
        )
    for key, shape in expected.items():
        got = tuple(getattr(saved[key], "shape", ()))
        if got != shape:
            return f"{where}: {key!r} has shape {got}, the module needs {shape}"
    return None


def checkpoint_problem(checkpoint: Path) -> str | None:
    """What makes the Algorithm checkpoint ``checkpoint`` unusable, or None.

    The files the weights live in must exist, every pickle and JSON file must load, and each
    module's weights must fit the module (:func:`module_state_problem`).
    """
    checkpoint = Path(checkpoint)
    new_stack = (checkpoint / "class_and_ctor_args.pkl").is_file()
    for required in _REQUIRED_NEW_STACK if new_stack else _REQUIRED_OLD_STACK:
        if not any((checkpoint / name).exists() for name in required.split("|")):
            return f"{required.replace('|', ' or ')} is missing (an incomplete checkpoint)"
    for file in sorted(checkpoint.rglob("*")):
        if file.suffix not in (".pkl", ".json"):
            continue
        try:
            with open(file, "rb") as f:
                pickle.load(f) if file.suffix == ".pkl" else json.load(f)
        except Exception as err:
            return f"{file.relative_to(checkpoint)} cannot be read ({one_line(err)})"
    if new_stack:
        modules = checkpoint / MODULES_DIR
        module_dirs = sorted(p.parent for p in modules.glob("*/module_state.*"))
        if not module_dirs:
            return f"no module weights (module_state.*) in {MODULES_DIR}"
        for module_dir in module_dirs:
            problem = module_state_problem(module_dir)
            if problem:
                return problem
    return None


def check_checkpoint(checkpoint: str | Path) -> None:
    """Raise ExperimentError (one line) if ``checkpoint`` is damaged or not what it claims."""
    problem = checkpoint_problem(Path(checkpoint))
    if problem:
        raise ExperimentError(f"checkpoint {checkpoint} is unusable: {problem}")


def find_checkpoint(path: str | Path) -> Path:
    """The RLlib checkpoint at ``path``, or the newest usable one below it (trial or
    experiment dir); a damaged or foreign checkpoint raises ExperimentError."""
    path = Path(path).expanduser().absolute()  # RLlib's restore takes a relative path for a URI
    if not path.exists():
        raise ExperimentError(f"checkpoint not found: {path}")
    if (path / CHECKPOINT_MARKER).is_file():
        check_checkpoint(path)
        return path
    # Algorithm checkpoints only, not the policy checkpoints inside old-stack ones.
    found = sorted(p.parent for p in path.rglob(CHECKPOINT_MARKER))
    found = [p for p in found if not any(q in p.parents for q in found)]
    if not found:
        raise ExperimentError(f"no RLlib checkpoint in {path}")
    # A run killed while writing a checkpoint leaves an incomplete one: use the newest whole.
    newest_first = sorted(found, key=lambda p: (p.stat().st_mtime, p.name), reverse=True)
    first_problem = None
    for candidate in newest_first:
        problem = checkpoint_problem(candidate)
        if problem is None:
            return candidate
        first_problem = first_problem or f"{candidate}: {problem}"
    raise ExperimentError(f"no usable RLlib checkpoint in {path} ({first_problem})")


def check_resume(experiment_dir: str | Path) -> None:
    """Before ``--resume``: each trial's newest checkpoint (the one Tune restores) must be
    usable, or the trial would fail on restore with a raw error (or restore random weights)."""
    experiment_dir = Path(experiment_dir)
    if not experiment_dir.is_dir():
        return  # nothing to resume: Tune starts the run afresh
    for trial in sorted(p for p in experiment_dir.iterdir() if p.is_dir()):
        checkpoints = sorted(trial.glob("checkpoint_*"))
        if checkpoints:
            problem = checkpoint_problem(checkpoints[-1])
            if problem:
                raise ExperimentError(
                    f"cannot resume: checkpoint {checkpoints[-1]} is unusable: {problem}"
                )


def restore_algorithm(path: str | Path) -> Any:
    """``Algorithm.from_checkpoint`` of the checkpoint at (or newest below) ``path``, after
    :func:`check_checkpoint`: a damaged or foreign checkpoint raises ExperimentError."""
    import rllib_stpn

    checkpoint = find_checkpoint(path)
    rllib_stpn.register()  # the checkpoint's env id or "stpn" model must resolve
    from ray.rllib.algorithms.algorithm import Algorithm

    return Algorithm.from_checkpoint(str(checkpoint))
