"""Benchmark: trie-constrained beam search, our LogitsProcessor vs the GENRE-style hook.

    python benchmarks/trie.py            # 20k-entry KB, beam 5, batches of 32 questions
    python benchmarks/trie.py --quick    # smaller, for a smoke test

Claim (CHAPTERS.md, benchmarks): the overhead of `TrieLogitsProcessor` over unconstrained `generate` is
<= 1.3x; the baseline is a nested-dict trie walked from the root in `prefix_allowed_tokens_fn` (GENRE,
`trie.get(sent.tolist())`), whose overhead is reported next to it. Everything is measured in this run,
on the same randomly initialised BART (the model's speed, not its quality, matters here).

Constrained and unconstrained runs stop after different numbers of steps, and this machine may be shared,
so the overhead is measured *inside* each constrained run: the constraint processor is wrapped in a timer,
and overhead = (generate time) / (generate time - time spent in the constraint), i.e. how much slower the
same decoding is because of the constraint. The hook arm passes transformers' own
`PrefixConstrainedLogitsProcessor` (what `generate(prefix_allowed_tokens_fn=fn)` builds) through the same
timer. An unconstrained run is shown for reference (ms per step, steps counted by a no-op processor). KB: the first 20k facts of the chapter's KgCLUE KB (S [SEP] P [SEP] M keys) when the data set is
available, else 20k random character keys with the same length distribution.
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

import torch
from transformers import LogitsProcessor, LogitsProcessorList
from transformers.generation.logits_process import PrefixConstrainedLogitsProcessor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from lib.trie import (CharVocab, DictTrie, Trie, TrieLogitsProcessor, build_kb,  # noqa: E402
                      make_bart, prefix_allowed_tokens_fn)


class Timed(LogitsProcessor):
    """Wrap a processor and accumulate the seconds spent in it."""

    def __init__(self, inner):
        self.inner, self.seconds = inner, 0.0

    def __call__(self, input_ids, scores):
        start = time.perf_counter()
        out = self.inner(input_ids, scores)
        self.seconds += time.perf_counter() - start
        return out


class StepCounter(LogitsProcessor):
    """A no-op processor that counts decoding steps."""

    def __init__(self):
        self.steps = 0

    def __call__(self, input_ids, scores):
        self.steps += 1
        return scores


def kgclue_keys(n: int):
    from lib import data, text

    records = data.load_kgclue("train") + data.load_kgclue("dev") + data.load_kgclue("test_public")
    kb = build_kb(records, n_relations=2, p_homonym=0.3, seed=0)
    voc = CharVocab(text.chinese_tokenizer(), [r.question for r in records]
                    + [f.subject + f.meaning + f.relation for f in kb.facts])
    keys = [voc.key(f) for f in kb.facts[:n]]
    questions = [voc.encode(r.question) for r in records[:4096]]
    return keys, questions, len(voc), "KgCLUE KB"


def random_keys(n: int, vocab: int = 4000, seed: int = 0):
    rng = random.Random(seed)
    keys = [[rng.randrange(5, vocab) for _ in range(rng.randint(4, 20))] for _ in range(n)]
    questions = [[rng.randrange(5, vocab) for _ in range(rng.randint(8, 20))] for _ in range(4096)]
    return keys, questions, vocab, "random keys"


def timed_generate(model, batches, processor_factory, num_beams, max_new_tokens):
    """Run generate over the batches; returns (total seconds, steps, seconds inside the constraint)."""
    counter, inside, start = StepCounter(), 0.0, time.perf_counter()
    for src in batches:
        timed = Timed(processor_factory()) if processor_factory else None
        procs = LogitsProcessorList([counter] + ([timed] if timed else []))
        with torch.no_grad():
            model.generate(input_ids=src, attention_mask=src.ne(0), num_beams=num_beams, do_sample=False,
                           max_new_tokens=max_new_tokens, length_penalty=0.0, pad_token_id=0,
                           eos_token_id=CharVocab.EOS, decoder_start_token_id=CharVocab.BOS,
                           logits_processor=procs)
        inside += timed.seconds if timed else 0.0
    return time.perf_counter() - start, counter.steps, inside


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=20000)
    parser.add_argument("--beams", type=int, default=5)
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.entries, args.batches, args.repeats = 2000, 2, 1
    torch.set_num_threads(1)
    try:
        keys, questions, vocab, source = kgclue_keys(args.entries)
    except Exception as error:  # data set missing: fall back to synthetic keys
        print(f"(KgCLUE not available: {error}; using random keys)")
        keys, questions, vocab, source = random_keys(args.entries)
    t0 = time.perf_counter()
    trie = Trie(keys, end_token=CharVocab.EOS)
    build_flat = time.perf_counter() - t0
    t0 = time.perf_counter()
    dict_trie = DictTrie([k + [CharVocab.EOS] for k in keys])
    build_dict = time.perf_counter() - t0
    model = make_bart(vocab, d_model=128, layers=2, heads=4, ffn=256, max_len=128, seed=0)
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(len(questions), generator=gen).tolist()
    batches = []
    for b in range(args.batches):
        chunk = [questions[i] for i in order[b * args.batch_size:(b + 1) * args.batch_size]]
        src = torch.zeros(len(chunk), max(map(len, chunk)), dtype=torch.long)
        for i, q in enumerate(chunk):
            src[i, :len(q)] = torch.tensor(q)
        batches.append(src)
    max_new = max(map(len, keys)) + 2
    arms = {
        "unconstrained generate": None,
        "ours: TrieLogitsProcessor": lambda: TrieLogitsProcessor(trie, CharVocab.EOS, num_beams=args.beams),
        "hook + flat Trie (root walk)": lambda: PrefixConstrainedLogitsProcessor(
            prefix_allowed_tokens_fn(trie, CharVocab.EOS), args.beams),
        "hook + GENRE dict trie (root walk)": lambda: PrefixConstrainedLogitsProcessor(
            prefix_allowed_tokens_fn(dict_trie, CharVocab.EOS), args.beams),
    }
    timed_generate(model, batches[:1], None, args.beams, 4)  # warm-up
    results = {name: [] for name in arms}
    for _ in range(args.repeats):  # interleave the arms so that machine load hits all of them alike
        for name, factory in arms.items():
            results[name].append(timed_generate(model, batches, factory, args.beams, max_new))
    print(f"KB: {len(trie):,} entries ({source}), {trie.num_nodes():,} nodes; flat trie {trie.nbytes() / 1e6:.1f} MB,"
          f" built in {build_flat:.2f} s (dict trie {build_dict:.2f} s)")
    print(f"beam {args.beams}, {args.batches} batches x {args.batch_size} questions, vocab {vocab}, "
          f"best of {args.repeats} runs, 1 thread\n")
    print(f"| {'decoding':36s} | {'total s':>8s} | {'steps':>6s} | {'ms/step':>8s} | {'constraint ms/step':>18s} "
          f"| {'overhead':>8s} |")
    print(f"|{'-' * 38}|{'-' * 10}|{'-' * 8}|{'-' * 10}|{'-' * 20}|{'-' * 10}|")
    overhead, inside_per_step = {}, {}
    for name, runs in results.items():
        total, steps, inside = min(runs, key=lambda r: r[2] / max(r[0] - r[2], 1e-9))
        overhead[name], inside_per_step[name] = total / (total - inside), inside / steps
        print(f"| {name:36s} | {total:8.2f} | {steps:6d} | {1000 * total / steps:8.2f} | "
              f"{1000 * inside / steps:18.3f} | {overhead[name]:7.3f}x |")
    ours_name, genre_name = "ours: TrieLogitsProcessor", "hook + GENRE dict trie (root walk)"
    ours, genre = overhead[ours_name], overhead[genre_name]
    print(f"\noverhead ours {ours:.3f}x (target <= 1.3x: {'met' if ours <= 1.3 else 'NOT met'}); GENRE-style "
          f"baseline {genre:.3f}x; time inside the constraint per step: baseline / ours = "
          f"{inside_per_step[genre_name] / inside_per_step[ours_name]:.1f}x")


if __name__ == "__main__":
    os.environ.setdefault("BOOK_DATA_DIR", str(Path(__file__).resolve().parent.parent.parent / "shared" / "data"))
    main()
