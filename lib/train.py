"""One small training loop (epochs of caller-defined steps, a tqdm progress bar, a history) and one batcher
that groups sequences of similar length."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
import math
from typing import Callable, Iterable, Sequence

import numpy as np
from tqdm.auto import tqdm

from lib import utils
from lib.viz import in_book_build

SMOKE_STEPS = 3  # steps per epoch (and one epoch) when BOOK_SMOKE=1


@dataclass
class History:
    """What `fit` records: the loss of every step, metrics after every epoch, wall-clock seconds."""

    losses: list[float] = field(default_factory=list)
    metrics: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def metric(self, name: str) -> list[float]:
        """The values of one metric, epoch by epoch."""
        return [m[name] for m in self.metrics]


def fit(
    step: Callable[[object], float],
    batches: Callable[[int], Iterable],
    num_epochs: int,
    *,
    evaluate: Callable[[int], dict] | None = None,
    desc: str = "train",
    progress: bool = True,
) -> History:
    """Run `num_epochs` epochs of `step(batch)` over `batches(epoch)`; evaluate after each epoch.

    `step` owns the model and optimizer and returns the batch loss as a float; `batches(epoch)` returns the
    epoch's (seeded) batches. The progress bar shows the running loss; `History.metrics[e]` holds
    `evaluate(e)` plus the epoch's mean loss. A NaN or infinite loss stops training with an error.
    With ``BOOK_SMOKE=1`` only one epoch of ``SMOKE_STEPS`` steps runs (a check that the code path works)."""
    if isinstance(num_epochs, bool) or not isinstance(num_epochs, int) or num_epochs < 1:
        raise ValueError(f"num_epochs must be a positive int, got {num_epochs!r}")
    if utils.SMOKE:
        num_epochs = 1
    history, start = History(), time.perf_counter()
    for epoch in range(num_epochs):
        epoch_losses = []
        bar = tqdm(batches(epoch), desc=f"{desc} {epoch + 1}/{num_epochs}", leave=False, disable=not progress or in_book_build())
        for batch in bar:
            if utils.SMOKE and len(epoch_losses) >= SMOKE_STEPS:
                break
            loss = float(step(batch))
            if not math.isfinite(loss):
                raise FloatingPointError(f"loss became {loss} at epoch {epoch}, step {len(epoch_losses)}: "
                                         "lower the learning rate or check the inputs for NaN/inf")
            epoch_losses.append(loss)
            if len(epoch_losses) % 10 == 0:
                bar.set_postfix(loss=f"{sum(epoch_losses[-10:]) / 10:.4f}")
        history.losses += epoch_losses
        metrics = {"epoch": epoch, "loss": sum(epoch_losses) / max(len(epoch_losses), 1)}
        if evaluate is not None:
            metrics.update(evaluate(epoch))
        history.metrics.append(metrics)
    history.seconds = time.perf_counter() - start
    return history


def length_batches(lengths: Sequence[int], *, batch_size: int | None = None, max_tokens: int | None = None,
                   max_cells: int | None = None, shuffle: bool = True, seed: int = 0) -> list[list[int]]:
    """Group indices into batches of similar length (little padding), the one batcher every chapter uses.

    A batch of ``B`` sequences padded to length ``L`` satisfies every bound that is given: ``B <= batch_size``,
    ``B * L <= max_tokens`` (encoders), ``B * L**2 <= max_cells`` (token-pair scores ``[B, C, L, L]``); a
    single sequence longer than a bound still forms its own batch. Indices are sorted by length (ties in a
    seeded random order when ``shuffle``), cut greedily, and with ``shuffle`` the batch order is seeded too,
    so every epoch with its own ``seed`` sees new batches. Returns lists of indices into ``lengths``."""
    lengths = list(lengths)
    if any(isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0 for n in lengths):
        raise ValueError("lengths must be non-negative ints")
    bounds = {"batch_size": batch_size, "max_tokens": max_tokens, "max_cells": max_cells}
    for name, value in bounds.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive int or None, got {value!r}")
    if all(v is None for v in bounds.values()):
        raise ValueError("give at least one of batch_size, max_tokens, max_cells")
    rng = np.random.default_rng(seed)
    keys = np.asarray(lengths, dtype=float) + (rng.random(len(lengths)) * 0.5 if shuffle else 0.0)
    order = np.argsort(keys, kind="stable")

    def fits(count: int, width: int) -> bool:
        return ((batch_size is None or count <= batch_size) and (max_tokens is None or count * width <= max_tokens)
                and (max_cells is None or count * width * width <= max_cells))

    batches: list[list[int]] = []
    current: list[int] = []
    width = 0
    for i in order:
        new_width = max(width, lengths[i])
        if current and not fits(len(current) + 1, new_width):
            batches.append(current)
            current, new_width = [], lengths[i]
        current.append(int(i))
        width = new_width
    if current:
        batches.append(current)
    if shuffle:
        batches = [batches[j] for j in rng.permutation(len(batches))]
    return batches
