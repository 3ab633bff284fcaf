"""Benchmark: CoSENT loss, forward + backward, measured side by side in one run.

    python benchmarks/cosent.py [--threads 1] [--reps 20]

Compares `lib.cosent.cosent_loss` (sort + suffix log-sum-exp, analytic backward) with
* `lib.cosent.cosent_loss_dense`, the O(B^2) masked matrix of the official code (target: >= 20x at B = 4096),
* `sentence_transformers.losses.CoSENTLoss` (already sort-based; target: ratio >= 1.0),
on the same scores and labels (integer scores 0-5, many ties), and checks that the loss and the gradient agree
(max abs difference <= 1e-5). Ratios are baseline time / our time (higher = we are faster).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from lib import cosent as C  # noqa: E402

SIZES = (256, 1024, 4096, 16384)
DENSE_MAX = 4096  # the B x B matrix beyond this is slow and memory-hungry: not timed


def make_inputs(B: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(B, generator=g) * 2 - 1
    labels = (torch.rand(B, generator=g) * 5).round()
    return scores, labels


def forward_backward(fn, scores: torch.Tensor) -> tuple[float, torch.Tensor]:
    x = scores.clone().requires_grad_()
    loss = fn(x)
    loss.backward()
    return loss.item(), x.grad


def median_times(fns: dict, scores: torch.Tensor, reps: dict) -> dict:
    """Median seconds per forward + backward; the implementations are timed in alternation, so a change of
    machine load during the run affects all of them alike."""
    for fn in fns.values():
        forward_backward(fn, scores)  # warm-up
    times = {name: [] for name in fns}
    for rep in range(max(reps.values())):
        for name, fn in fns.items():
            if rep < reps[name]:
                start = time.perf_counter()
                forward_backward(fn, scores)
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from sentence_transformers.sentence_transformer.losses import CoSENTLoss

    # sentence-transformers computes cos(a, b) itself; a similarity_fct returning the scores feeds them to its body
    st_loss = CoSENTLoss(None, scale=20.0, similarity_fct=lambda a, b: a[:, 0])
    header = (f"{'B':>6} | {'ours ms':>8} | {'dense ms':>9} | {'ST ms':>7} | {'dense/ours':>10} | {'ST/ours':>7} | "
              f"{'max|dL| f64':>11} | {'max|dg| f64':>11} | {'max|dg| f32':>11}")
    print(f"CoSENT loss, forward + backward, float32 timings, {args.threads} thread(s), median of {args.reps} reps")
    print("differences: largest over (ours vs dense, ours vs ST); f64 = same inputs in float64, f32 = the timed runs")
    print(header)
    print("-" * len(header))
    ok = True
    for B in SIZES:
        scores, labels = make_inputs(B)
        ours = lambda x: C.cosent_loss(x, labels)  # noqa: E731
        dense = lambda x: C.cosent_loss_dense(x, labels)  # noqa: E731
        st = lambda x: st_loss.compute_loss_from_embeddings([x[:, None], x[:, None]], labels)  # noqa: E731
        baselines = {"st": st} if B > DENSE_MAX else {"st": st, "dense": dense}
        diffs64, diffs32 = [], []
        l64, g64 = forward_backward(ours, scores.double())
        _, g32 = forward_backward(ours, scores)
        for fn in baselines.values():
            lb, gb = forward_backward(fn, scores.double())
            diffs64.append((abs(l64 - lb), (g64 - gb).abs().max().item()))
            diffs32.append((forward_backward(fn, scores)[1] - g32).abs().max().item())
        dl = max(d[0] for d in diffs64)
        dg = max(d[1] for d in diffs64)
        ok &= dl <= 1e-5 and dg <= 1e-5
        fns = {"ours": ours, **baselines}
        t = median_times(fns, scores, {"ours": args.reps, "st": args.reps, "dense": max(3, args.reps // 5)})
        dense_ms = f"{1e3 * t['dense']:>9.2f}" if "dense" in t else f"{'-':>9}"
        dense_ratio = f"{t['dense'] / t['ours']:>10.1f}" if "dense" in t else f"{'-':>10}"
        print(f"{B:>6} | {1e3 * t['ours']:>8.3f} | {dense_ms} | {1e3 * t['st']:>7.3f} | {dense_ratio} | "
              f"{t['st'] / t['ours']:>7.2f} | {dl:>11.1e} | {dg:>11.1e} | {max(diffs32):>11.1e}")
    print(f"agreement (max abs diff <= 1e-5 in loss and gradient): {'yes' if ok else 'NO'}")
    print("targets at B = 4096: dense/ours >= 20, ST/ours >= 1.0")


if __name__ == "__main__":
    main()
