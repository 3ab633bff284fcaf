"""Entropy normalization: batched safeguarded solver vs `scipy.optimize.brentq` row by row.

Targets: ≥ 10× faster on 10k rows × 64 classes, ≥ 2× on 2k rows × 1k classes, ≤ 6 entropy
evaluations per row (brentq ≈ 12), same Γ to 1e-6. Prints one table; run with `python benchmarks/entropy.py`.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch
from scipy.optimize import brentq
from scipy.special import logsumexp

from lib import entropy as en


def row_entropy(logp: np.ndarray, gamma: float) -> float:
    """H(softmax(γ ℓ)) for one row, NumPy (the baseline's objective)."""
    s = gamma * logp
    log_q = s - logsumexp(s)
    return float(-(np.exp(log_q) * log_q).sum())


def brentq_rows(logp: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Γ per row by brentq on [0, b], b doubled from 1 until H(b) < target; counts every evaluation."""
    gammas, counts = np.empty(len(logp)), np.empty(len(logp), dtype=int)
    for i, (row, target) in enumerate(zip(logp, targets)):
        count = [0]

        def f(g):
            count[0] += 1
            return row_entropy(row, g) - target

        high = 1.0
        while f(high) > 0:
            high *= 2
        gammas[i] = brentq(f, 0.0, high, xtol=1e-12, rtol=1e-12)
        counts[i] = count[0]
    return gammas, counts


def case(rows: int, classes: int, seed: int = 0, brentq_rows_timed: int | None = None) -> dict:
    """Solve `rows` random rows in one batch and with brentq row by row. brentq's cost is linear in the
    rows, so with ``brentq_rows_timed`` it is timed on that many rows and scaled up (Γ compared on them)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, (rows, classes))
    logp = logits - logsumexp(logits, axis=-1, keepdims=True)
    low, high = en.entropy_range(logits=logits)
    targets = low + rng.uniform(0.02, 0.98, rows) * (high - low)  # every reachable range, away from the ends

    start = time.perf_counter()
    result = en.entropy_normalize(logp=torch.from_numpy(logp), target=torch.from_numpy(targets))
    ours_s = time.perf_counter() - start

    timed = rows if brentq_rows_timed is None else min(rows, brentq_rows_timed)
    start = time.perf_counter()
    ref_gamma, ref_counts = brentq_rows(logp[:timed], targets[:timed])
    ref_s = (time.perf_counter() - start) * rows / timed

    evals = result.evaluations.numpy()
    return {
        "rows × classes": f"{rows} × {classes}", "ours (s)": ours_s, "brentq (s)": ref_s,
        "speed-up": ref_s / ours_s, "evals mean": evals.mean(), "evals median": float(np.median(evals)),
        "evals max": int(evals.max()), "rows ≤ 6 evals": float((evals <= 6).mean()),
        "brentq evals mean": ref_counts.mean(), "max rel. |ΔΓ|": float(np.max(np.abs(result.gamma.numpy()[:timed] / ref_gamma - 1))),
        "converged": result.converged,
    }


def main() -> None:
    torch.set_num_threads(1)
    results = [case(10_000, 64), case(2_000, 1_000)]
    columns = list(results[0])
    print(" | ".join(columns))
    for r in results:
        print(" | ".join(f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c]) for c in columns))
    print("targets: speed-up ≥ 10 (10k × 64) and ≥ 2 (2k × 1k); ≤ 6 evaluations per row; max rel. |ΔΓ| ≤ 1e-6")


if __name__ == "__main__":
    main()
