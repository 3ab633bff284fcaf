"""How many torch threads for the book's tiny models? Times forward+backward of small models at 1 and 2 threads.

The book sets `torch.set_num_threads(1)` in every chapter (`lib.utils.set_threads`); this script is the
measurement behind that choice. Prints seconds per step and the ratio (2 threads / 1 thread)."""
from __future__ import annotations

import time

import torch
from torch import nn


def models() -> dict[str, tuple[nn.Module, torch.Tensor]]:
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(2, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 1))
    encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(128, 4, 256, batch_first=True), num_layers=2)
    return {"2-D GAN critic MLP, batch 256": (mlp, torch.randn(256, 2)),
            "2-layer transformer d=128, 32×64 tokens": (encoder, torch.randn(32, 64, 128))}


def seconds_per_step(model: nn.Module, batch: torch.Tensor, threads: int, steps: int = 30) -> float:
    torch.set_num_threads(threads)
    for _ in range(3):
        model(batch).sum().backward()
    start = time.perf_counter()
    for _ in range(steps):
        model(batch).sum().backward()
    return (time.perf_counter() - start) / steps


def main() -> None:
    print("model | 1 thread (ms/step) | 2 threads (ms/step) | 2 threads / 1 thread")
    for name, (model, batch) in models().items():
        one, two = seconds_per_step(model, batch, 1), seconds_per_step(model, batch, 2)
        print(f"{name} | {one * 1e3:.2f} | {two * 1e3:.2f} | {two / one:.2f}")


if __name__ == "__main__":
    main()
