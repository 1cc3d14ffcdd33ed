"""What every task of `reproduce.py` shares: model specs, per-run results, mean and std."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from rllib_stpn.nn.cores import CORES


@dataclass
class ModelSpec:
    """One row of a results table: a core at a hidden size, and the paper's numbers for it.

    `unavailable` says why the model cannot run in this checkout (its core is not registered);
    such a row is reported as "not available" instead of being trained.
    """

    name: str
    core: str
    hidden_size: int | None = None
    params: int | None = None
    plasticity: str = "per_synapse"
    unavailable: str | None = None
    # The paper's numbers as printed there ("98.55 ± 2.76"), with where they come from.
    paper_metric: str | None = None
    paper_power: str | None = None
    paper_source: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RunResult:
    """One seed of one model: the final (inference) metric and power, and the training curve."""

    seed: int
    metric: float
    power_mean: float | None
    power_std: float | None
    seconds: float
    curve_x: list[float] = field(default_factory=list)
    curve_metric: list[float] = field(default_factory=list)
    curve_power: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean and population standard deviation (ddof=0) of the values that are not None/NaN."""
    clean = [float(v) for v in values if v is not None and not math.isnan(v)]
    if not clean:
        return None, None
    return statistics.fmean(clean), statistics.pstdev(clean)


def model_specs(
    rows: Sequence[tuple[str, str, str]],
    hidden_for: Callable[[str, str], int],
    params_for: Callable[[str, int, str], int],
    paper: Mapping[str, tuple[str | None, str | None]],
    paper_source: str,
) -> list[ModelSpec]:
    """ModelSpecs for (name, core, plasticity) rows at the sizes `hidden_for(core, plasticity)`
    gives, with the paper's (metric, power) strings per name. A core that is not registered
    here is kept as a "not available" row."""
    specs = []
    for name, core, plasticity in rows:
        metric, power = paper.get(name, (None, None))
        spec = ModelSpec(name, core, plasticity=plasticity, paper_metric=metric, paper_power=power)
        spec.paper_source = paper_source if name in paper else None
        spec.unavailable = core_unavailable(core)
        if spec.unavailable is None:
            spec.hidden_size = hidden_for(core, plasticity)
            spec.params = params_for(core, spec.hidden_size, plasticity)
        specs.append(spec)
    return specs


def core_unavailable(core: str) -> str | None:
    """Why `core` cannot be built here (not registered in this checkout), or None if it can."""
    if core not in CORES:
        return f"core {core!r} is not registered in rllib_stpn.nn.cores.CORES {CORES}"
    return None
