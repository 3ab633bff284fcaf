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


def _as_tensor(name: str, value: Any) -> torch.Tensor:
    """A tensor view of `value` (a tensor, NumPy array or nested sequence of numbers), else raise TypeError."""
    if isinstance(value, torch.Tensor):
        return value
    try:
        import numpy as np

        array = np.asarray(value)
    except (ValueError, TypeError) as error:
        raise TypeError(f"{name} must be a tensor, an array or a sequence of numbers, got {type(value).__name__}") \
            from error
    if array.dtype == object or array.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold numbers, got {type(value).__name__} of dtype {array.dtype}")
    return torch.from_numpy(np.ascontiguousarray(array))


def _first_bad(mask: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(i) for i in torch.nonzero(mask)[0])


def check_finite(name: str, value: Any, *, what: str = "") -> Any:
    """Return `value` (a tensor, array or sequence of numbers) if every entry is finite, else raise ValueError
    naming the count of NaN and ±inf entries and the index of the first one. `what` is appended as a hint
    (e.g. "a diverged model gives NaN scores: check the training loss")."""
    tensor = _as_tensor(name, value)
    if tensor.is_floating_point() or tensor.is_complex():
        bad = ~torch.isfinite(tensor)
        if bool(bad.any()):
            nan, inf = int(torch.isnan(tensor).sum()), int(torch.isinf(tensor).sum())
            hint = f"; {what}" if what else ""
            raise ValueError(f"{name} must be finite, got {nan} NaN and {inf} ±inf of {tensor.numel()} entries "
                             f"(first at index {_first_bad(bad)}){hint}")
    return value


def check_index_range(name: str, ids: Any, low: int, high: int) -> Any:
    """Return `ids` if it holds integers with ``low <= id < high`` (an empty `ids` passes), else raise:
    TypeError for floating-point or non-numeric ids (they would be truncated), ValueError naming the
    smallest/largest offending id and its index."""
    tensor = _as_tensor(name, ids)
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer ids, got dtype {tensor.dtype}")
    if tensor.numel() == 0:
        return ids
    outside = (tensor < low) | (tensor >= high)
    if bool(outside.any()):
        raise ValueError(f"{name} must hold ids in [{low}, {high}), got min {int(tensor.min())}, max "
                         f"{int(tensor.max())} ({int(outside.sum())} outside; first at index {_first_bad(outside)})")
    return ids


def check_probabilities(name: str, value: Any, *, dim: int | None = -1, atol: float | None = None) -> Any:
    """Return `value` if its entries are finite probabilities in [0, 1] and, with `dim` (default the last),
    every slice along `dim` sums to 1 within `atol` (fp32 accumulation); ``dim=None`` checks entries only.

    Default `atol`: ``max(1e-4, 8 * eps(dtype))``. Each stored probability carries a relative rounding error
    of a few eps, so the sum of a slice is off by a few eps whatever its length (fp16: 7.8e-3, bf16: 0.0625).
    Raises ValueError saying what was given (e.g. logits instead of probabilities)."""
    tensor = _as_tensor(name, value)
    if not tensor.is_floating_point():
        raise TypeError(f"{name} must be floating-point probabilities, got dtype {tensor.dtype}")
    check_finite(name, tensor)
    if tensor.numel() == 0:
        return value
    low, high = float(tensor.min()), float(tensor.max())
    if low < 0 or high > 1:
        raise ValueError(f"{name} must be probabilities in [0, 1], got values in [{low:.4g}, {high:.4g}] "
                         "(logits? apply softmax/sigmoid first)")
    if dim is not None:
        atol = max(1e-4, 8 * torch.finfo(tensor.dtype).eps) if atol is None else atol
        sums = tensor.to(torch.float64 if tensor.dtype == torch.float64 else torch.float32).sum(dim=dim)
        worst = float((sums - 1).abs().max())
        if worst > atol:
            raise ValueError(f"{name} must sum to 1 along dim {dim}, got sums off by up to {worst:.4g}")
    return value
