"""Placement: where one checkpoint tensor goes inside the model's parameters."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True, slots=True, eq=False)
class Placement:
    """Copy a checkpoint tensor of `shape` into `param[index]`, taking source rows `rows` (in that order)
    first when given; the result is reshaped to the destination's shape (e.g. conv [C, 1, W] -> [C, W])."""

    param: str
    shape: tuple[int, ...]
    index: tuple[int | slice, ...] = ()
    rows: Tensor | None = None
