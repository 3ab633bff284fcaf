"""Benchmarks for the GPLinker chapter; every ratio is measured against its baseline in the same run.

1. Relation decoding at l = 128, n = 50 predicates on noisy (untrained-like) logits: the vectorised
   decoder `lib.gplinker.decode_relations` vs the nested-loop decoder written like the public ports
   (`decode_relations_loop`); outputs must be identical. Target (CHAPTERS.md): >= 20x.
2. Sparse vs dense multi-label CE at l = 256, n = 50: time of (label construction + loss + backward) and
   peak extra memory (RSS, each variant in a fresh process), the dense baseline using multi-hot labels.

Run: ``BOOK_DATA_DIR=... python benchmarks/gplinker.py`` (about a minute on a quiet 2-core CPU).
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import statistics
import time

import numpy as np
import torch

from lib.globalpointer import (
    multilabel_categorical_crossentropy,
    pairs_to_flat_indices,
    sparse_multilabel_categorical_crossentropy,
)
from lib.gplinker import decode_relations, decode_relations_loop, noisy_logits, pairs_to_dense


def best_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_decoder(length: int, num_predicates: int, repeat: int) -> list[dict]:
    rows = []
    for mean, std in [(-4.0, 1.5), (-3.0, 1.5), (-2.5, 1.5)]:
        ent, hh, tt, gold = noisy_logits(length, num_predicates, mean, std, seed=0)
        special = (0, length - 1)
        fast = decode_relations(ent, hh, tt, special=special)
        slow = decode_relations_loop(ent, hh, tt, special=special)
        n_sub, n_obj = int((ent[0] > 0).sum()), int((ent[1] > 0).sum())
        t_fast = best_time(lambda: decode_relations(ent, hh, tt, special=special), repeat)
        t_slow = best_time(lambda: decode_relations_loop(ent, hh, tt, special=special), max(1, repeat // 3))
        rows.append({"noise": f"N({mean}, {std}^2)", "subjects": n_sub, "objects": n_obj,
                     "decoded": len(fast), "identical": fast == slow, "gold_recovered": gold <= fast,
                     "loop_ms": 1e3 * t_slow, "vectorised_ms": 1e3 * t_fast, "speed-up": t_slow / t_fast})
    return rows


def _loss_worker(kind: str, batch: int, num_predicates: int, length: int, positives: int, queue) -> None:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(batch, num_predicates, length, length, generator=g, requires_grad=True)
    pairs = torch.randint(0, length, (batch, num_predicates, positives, 2), generator=g)
    pairs[:, :, positives // 2:] = -1  # half of the slots are padding
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(3):
        start = time.perf_counter()
        flat_logits = logits.reshape(batch, num_predicates, length * length)
        if kind == "dense":
            labels = pairs_to_dense(pairs, length).reshape(batch, num_predicates, length * length)
            loss = multilabel_categorical_crossentropy(labels, flat_logits).sum(1).mean()
        else:
            flat = pairs_to_flat_indices(pairs, length)
            loss = sparse_multilabel_categorical_crossentropy(flat, flat_logits).sum(1).mean()
        loss.backward()
        times.append(time.perf_counter() - start)
        logits.grad = None
        del loss
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    queue.put({"time": min(times), "extra_mb": (peak - base) / 1024})


def bench_loss(batch: int, num_predicates: int, length: int, positives: int) -> dict:
    ctx = mp.get_context("spawn")
    out = {}
    for kind in ("dense", "sparse"):
        queue = ctx.Queue()
        proc = ctx.Process(target=_loss_worker, args=(kind, batch, num_predicates, length, positives, queue))
        proc.start()
        out[kind] = queue.get()
        proc.join()
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print("Decoder: l = 128, n = 50 predicates, noisy logits (6 gold triples at +6 plus noise)\n")
    rows = bench_decoder(128, 50, args.repeat)
    header = f"{'noise':<14}{'subj':>6}{'obj':>6}{'decoded':>9}{'same':>6}{'loop ms':>10}{'vec ms':>9}{'speed-up':>10}"
    print(header)
    for r in rows:
        print(f"{r['noise']:<14}{r['subjects']:>6}{r['objects']:>6}{r['decoded']:>9}{str(r['identical']):>6}"
              f"{r['loop_ms']:>10.1f}{r['vectorised_ms']:>9.2f}{r['speed-up']:>9.1f}x")
    print(f"\nMulti-label CE at l = 256, n = 50, batch {args.batch} (labels + loss + backward, fresh process each)\n")
    res = bench_loss(args.batch, 50, 256, 8)
    print(f"{'variant':<10}{'time s':>9}{'extra peak MB':>15}")
    for kind in ("dense", "sparse"):
        print(f"{kind:<10}{res[kind]['time']:>9.3f}{res[kind]['extra_mb']:>15.1f}")
    print(f"\nratio dense/sparse: time {res['dense']['time'] / res['sparse']['time']:.2f}x, "
          f"memory {res['dense']['extra_mb'] / max(res['sparse']['extra_mb'], 1e-9):.2f}x")
    label_dense = args.batch * 50 * 256 * 256 * 4 / 2**20
    label_sparse = args.batch * 50 * 8 * 8 / 2**20
    print(f"label tensors alone: dense {label_dense:.1f} MB (float32 multi-hot) vs sparse {label_sparse:.3f} MB "
          f"(int64 indices): {label_dense / label_sparse:.0f}x")
    print(f"(decoder speed-up median over noise levels: {statistics.median(r['speed-up'] for r in rows):.1f}x)")


if __name__ == "__main__":
    main()
