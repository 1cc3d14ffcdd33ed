"""Shared plumbing of the comparison cores: the time loop, states, checks (the power sum is
`rllib_stpn.nn.functional.synaptic_power`)."""

from __future__ import annotations

import math

import torch
from torch import nn

from rllib_stpn.nn.functional import (
    lengths_or_none,
    synaptic_power,  # noqa: F401  (re-exported for the cores)
)
from rllib_stpn.nn.stpn import _check_size


def bmv(G: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Per-sample matrix-vector product: (B, H, D) x (B, D) -> (B, H)."""
    return torch.bmm(G, z.unsqueeze(-1)).squeeze(-1)


def plus_bmv(shared: torch.Tensor, G: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """shared + G z per sample, (B, H) + (B, H, D) x (B, D), as one batched product."""
    return torch.baddbmm(shared.unsqueeze(-1), G, z.unsqueeze(-1)).squeeze(-1)


def plus_outer(
    base: torch.Tensor, post: torch.Tensor, pre: torch.Tensor, beta: float = 1.0, alpha: float = 1.0
) -> torch.Tensor:
    """beta base + alpha post ⊗ pre per sample, (B, H, D), as one batched product."""
    return torch.baddbmm(base, post.unsqueeze(-1), pre.unsqueeze(-2), beta=beta, alpha=alpha)


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
    field order) and `_step`, which maps one time step x_t (B, I), its slice of `_drive` and
    the state to the output (B, H), the next state and, when asked, the power (B,).
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
        self, x: torch.Tensor, drive: torch.Tensor | None, state: tuple, return_power: bool
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

    def _drive(self, x: torch.Tensor) -> torch.Tensor | None:
        """The slow, state-free part of every step's input drive, for all steps in one product
        (B, T, ...), or None; `_step` gets its slice at t. Hoisting it out of the time loop
        saves a matrix product and its backward per step."""
        return None

    def forward(
        self,
        x: torch.Tensor,
        state: tuple | None = None,
        return_power: bool = False,
        seq_lens: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple] | tuple[torch.Tensor, tuple, torch.Tensor]:
        """x (B, T, I) -> out (B, T, H), next state, and with `return_power` the power (B, T).

        `seq_lens` (B,): valid steps per row of a zero-padded x. The loop stops after the
        longest row; out and power are zero from a row's length on, and the state returned for
        a row is the one after its own last step (as the STPN ops do).
        """
        state = self._check_state(x, state)
        B, T = x.shape[:2]
        lens = lengths_or_none(seq_lens, B, T)
        steps = T if lens is None else int(lens.max())
        drive = self._drive(x[:, :steps])
        final = state
        # Rows ending before the last step keep their state from the step they end at.
        ends = set() if lens is None else set(lens.tolist()) - {0}
        outs, powers = [], []
        for t in range(steps):
            d = None if drive is None else drive[:, t]
            out, state, power = self._step(x[:, t], d, state, return_power)
            outs.append(out)
            powers.append(power)
            if t + 1 in ends:
                rows = (lens == t + 1).to(x.device)
                final = self.state_type(
                    *(
                        torch.where(rows.view(B, *[1] * (s.dim() - 1)), s, f)
                        for s, f in zip(state, final)
                    )
                )
        if lens is None:
            final = state
        out = self._padded(outs, lens, T, x, self.hidden_size)
        if return_power:
            return out, final, self._padded(powers, lens, T, x)
        return out, final

    @staticmethod
    def _padded(
        parts: list[torch.Tensor], lens: torch.Tensor | None, T: int, x: torch.Tensor, *size: int
    ) -> torch.Tensor:
        """Stack per-step (B, *size) parts on dim 1; zeros at and after each row's length."""
        B = x.shape[0]
        if not parts:  # every row has length 0
            return x.new_zeros(B, T, *size)
        y = torch.stack(parts, 1)
        if lens is None:
            return y
        valid = torch.arange(len(parts), device=x.device) < lens.to(x.device).unsqueeze(1)
        y = y * valid.view(B, len(parts), *[1] * (y.dim() - 2)).to(y.dtype)
        pad = [0, 0] * (y.dim() - 2) + [0, T - len(parts)]
        return torch.nn.functional.pad(y, pad)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}"
