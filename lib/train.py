"""One small training loop: epochs of caller-defined steps, a tqdm progress bar and a history."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from tqdm.auto import tqdm

from lib.viz import in_book_build


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
    `evaluate(e)` plus the epoch's mean loss."""
    if not isinstance(num_epochs, int) or num_epochs < 1:
        raise ValueError(f"num_epochs must be a positive int, got {num_epochs!r}")
    history, start = History(), time.perf_counter()
    for epoch in range(num_epochs):
        epoch_losses = []
        bar = tqdm(batches(epoch), desc=f"{desc} {epoch + 1}/{num_epochs}", leave=False, disable=not progress or in_book_build())
        for batch in bar:
            loss = float(step(batch))
            if loss != loss:  # NaN
                raise FloatingPointError(f"loss became NaN at epoch {epoch}, step {len(epoch_losses)}")
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
