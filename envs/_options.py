"""Option checking shared by the env creators: one-line ValueErrors that name what is allowed."""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping
from typing import Any


def reject_unknown(env_id: str, unknown: Mapping[str, Any], valid: Iterable[str]) -> None:
    """Raise if `unknown` (the leftover keyword options of a creator) is not empty."""
    if unknown:
        names = ", ".join(repr(k) for k in sorted(unknown))
        raise ValueError(
            f"{env_id}: unknown option(s) {names}; valid options are: {', '.join(valid)}"
        )


def check_int(env_id: str, name: str, value: Any, minimum: int) -> int:
    """Return `value` as an int, raising unless it is an integer >= `minimum` (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{env_id}: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_float(env_id: str, name: str, value: Any, minimum: float | None = None) -> float:
    """Return `value` as a finite float (optionally >= `minimum`), raising otherwise."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if ok:
        value_f = float(value)
        ok = value_f == value_f and abs(value_f) != float("inf")
        if ok and minimum is not None:
            ok = value_f >= minimum
    if not ok:
        bound = "" if minimum is None else f" >= {minimum}"
        raise ValueError(f"{env_id}: {name} must be a finite number{bound}, got {value!r}")
    return value_f
