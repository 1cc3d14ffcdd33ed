"""The one-line error of the experiment path, and the helpers that phrase it."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

__all__ = ["ExperimentError", "check_keys", "did_you_mean", "one_line"]


class ExperimentError(ValueError):
    """A problem in an experiment file or option, described in one line."""


def did_you_mean(word: str, candidates: Any) -> str:
    """' (did you mean: a, b?)' for the nearest candidates, or ''."""
    matches = difflib.get_close_matches(str(word), sorted(set(map(str, candidates))), n=3)
    return f" (did you mean: {', '.join(matches)}?)" if matches else ""


def check_keys(given: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = set(given) - allowed
    if unknown:
        key = sorted(unknown)[0]
        names = ", ".join(sorted(allowed))
        raise ExperimentError(
            f"unknown {where} key {key!r}{did_you_mean(key, allowed)}; allowed: {names}"
        )


def one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    text = text.replace("Try `config.validate()` to get a more detailed error message. ", "")
    return f"{type(err).__name__}: {text}" if not isinstance(err, ValueError) else text
