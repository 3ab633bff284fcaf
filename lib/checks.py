"""Input validation shared by every lib module: errors name the argument, what was expected and what was given."""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch


def check_positive(name: str, value: Any, *, integer: bool = False, allow_zero: bool = False) -> Any:
    """Return `value` if it is a finite number (an int if `integer`) that is > 0 (≥ 0 if `allow_zero`), else raise."""
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        expected = "an int" if integer else "a number"
        raise TypeError(f"{name} must be {expected}, got {type(value).__name__} ({value!r})")
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be finite and {bound}, got {value!r}")
    return value


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    """Return `value` if it is one of `choices`, else raise."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def check_tensor(name: str, value: Any, ndim: int | None = None, *, floating: bool = False) -> torch.Tensor:
    """Return `value` if it is a torch.Tensor (with `ndim` dimensions, floating point if asked), else raise."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if floating and not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    if ndim is not None and value.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(value.shape)}")
    return value
