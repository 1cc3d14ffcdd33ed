"""Shared plumbing of the comparison cores: the time loop, states, checks (the power sum is
`rllib_stpn.nn.functional.synaptic_power`)."""

from __future__ import annotations

import math

import torch
from torch import nn

from rllib_stpn.nn.functional import synaptic_power  # noqa: F401  (re-exported for the cores)
from rllib_stpn.nn.stpn import _check_size


def bmv(G: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Per-sample matrix-vector product: (B, H, D) x (B, D) -> (B, H)."""
    return torch.bmm(G, z.unsqueeze(-1)).squeeze(-1)


def outer(post: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
    """Per-sample post ⊗ pre: (B, H), (B, D) -> (B, H, D)."""
    return post.unsqueeze(-1) * pre.unsqueeze(-2)


def check_number(name: str, value: object, low: float, high: float) -> float:
    ok = not isinstance(value, bool) and isinstance(value, int | float)
    if not (ok and math.isfinite(value) and low <= value <= high):
        raise ValueError(f"{name} must be a finite number in [{low}, {high}], got {value!r}")
    return float(value)


class PlasticLayer(nn.Module):
    """Shared plumbing: sizes, zero states, input checks and the loop over time.

    A subclass sets `state_type` (a NamedTuple), `state_shapes()` (per-sample shapes in the
    field order) and `_step`, which maps one time step x_t (B, I) and the state to the output
    (B, H), the next state and, when asked, the power (B,).
    """

    state_type: type[tuple]

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input_size = _check_size("input_size", input_size)
        self.hidden_size = _check_size("hidden_size", hidden_size)

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-sample shape of each state field, in the NamedTuple's order."""
        raise NotImplementedError

    def _step(
        self, x: torch.Tensor, state: tuple, return_power: bool
    ) -> tuple[torch.Tensor, tuple, torch.Tensor | None]:
        raise NotImplementedError

    def initial_state(
        self,
        batch_size: int,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> tuple:
        """Zero state for `batch_size` sequences (the paper's start of every sequence)."""
        ref = next(self.parameters())
        device = ref.device if device is None else device
        dtype = ref.dtype if dtype is None else dtype
        return self.state_type(
            *(
                torch.zeros(batch_size, *s, device=device, dtype=dtype)
                for s in self.state_shapes().values()
            )
        )

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a ValueError unless x is (batch, time >= 1, input_size)."""
        if not isinstance(x, torch.Tensor) or x.dim() != 3:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must have shape (batch, time, {self.input_size}), got {shape}")
        if x.shape[2] != self.input_size:
            raise ValueError(
                f"x has {x.shape[2]} features in its last dimension, "
                f"expected input_size={self.input_size}"
            )
        if x.shape[1] == 0:
            raise ValueError("x has 0 time steps, expected at least 1")

    def _check_state(self, x: torch.Tensor, state: tuple | None) -> tuple:
        self.check_input(x)
        B = x.shape[0]
        if state is None:
            return self.initial_state(B, device=x.device, dtype=x.dtype)
        fields = self.state_type._fields
        if not (isinstance(state, tuple) and len(state) == len(fields)):
            raise ValueError(f"state must be {self.state_type.__name__}{fields} or None")
        for name, value, shape in zip(fields, state, self.state_shapes().values()):
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            if got != (B, *shape):
                raise ValueError(f"state.{name} has shape {got}, expected {(B, *shape)}")
        return self.state_type(*state)

    def forward(
        self, x: torch.Tensor, state: tuple | None = None, return_power: bool = False
    ) -> tuple[torch.Tensor, tuple] | tuple[torch.Tensor, tuple, torch.Tensor]:
        """x (B, T, I) -> out (B, T, H), next state, and with `return_power` the power (B, T)."""
        state = self._check_state(x, state)
        outs, powers = [], []
        for t in range(x.shape[1]):
            out, state, power = self._step(x[:, t], state, return_power)
            outs.append(out)
            powers.append(power)
        if return_power:
            return torch.stack(outs, 1), state, torch.stack(powers, 1)
        return torch.stack(outs, 1), state

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}"
