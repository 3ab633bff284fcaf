"""Benchmark: event grouping by maximal cliques — networkx.find_cliques vs the post's recursion.

Both are measured in the same run on the same graphs (dense G(n, p) graphs and the Moon–Moser family,
the worst case of the recursion) and must return the same cliques. Times are process CPU time (robust on a shared machine). Prints a table of time ratios
(post recursion / networkx); > 1 means networkx is faster. Also times decoding of a realistic DuEE-sized
argument graph (few nodes per event type), where the post says the recursion is fast enough.

    python benchmarks/events.py            # ~1 minute on one CPU thread
"""
from __future__ import annotations

import itertools
import time

import networkx as nx
import torch

from lib import events as E


def best_of(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


def measure(name: str, nodes, adjacent, repeat: int = 3) -> dict:
    post = E.clique_search(nodes, adjacent, max_calls=None)   # no call budget: the benchmark wants the worst case
    ref = E.maximal_cliques(nodes, adjacent)
    if post != ref:
        raise AssertionError(f"{name}: the two searches disagree")
    t_post = best_of(lambda: E.clique_search(nodes, adjacent, max_calls=None), repeat)
    t_nx = best_of(lambda: E.maximal_cliques(nodes, adjacent), repeat)
    return {"graph": name, "nodes": len(list(nodes)), "cliques": len(ref), "post [ms]": 1e3 * t_post,
            "networkx [ms]": 1e3 * t_nx, "ratio": t_post / t_nx}


def main() -> None:
    torch.set_num_threads(1)
    rows = []
    for n, p in [(6, 0.8), (10, 0.7), (12, 0.8), (14, 0.8), (16, 0.85)]:
        g = nx.gnp_random_graph(n, p, seed=n)
        rows.append(measure(f"G({n}, {p})", list(g.nodes), E.edge_adjacency(g.edges), repeat=1 if n >= 14 else 3))
    for m in range(2, 7):
        nodes, adj = E.moon_moser_graph(m)
        rows.append(measure(f"Moon-Moser m={m}", nodes, adj, repeat=1 if m >= 5 else 3))
    # a DuEE-like argument graph: trigger + 4 roles, two events sharing one argument
    ev1 = {("T", "trig", 0, 1), ("T", "a", 3, 4), ("T", "b", 6, 8), ("T", "d", 10, 11)}
    ev2 = {("T", "trig", 13, 14), ("T", "a", 16, 17), ("T", "b", 19, 20), ("T", "d", 10, 11)}
    edges = [*itertools.combinations(sorted(ev1), 2), *itertools.combinations(sorted(ev2), 2)]
    rows.append(measure("DuEE-like (7 nodes)", sorted(ev1 | ev2), E.edge_adjacency(edges), repeat=20))

    header = f"{'graph':<22}{'nodes':>6}{'cliques':>9}{'post [ms]':>12}{'networkx [ms]':>15}{'ratio':>9}"
    print("event grouping: post recursion vs networkx.find_cliques (same cliques checked)")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['graph']:<22}{r['nodes']:>6}{r['cliques']:>9}{r['post [ms]']:>12.2f}"
              f"{r['networkx [ms]']:>15.2f}{r['ratio']:>8.1f}x")


if __name__ == "__main__":
    main()
