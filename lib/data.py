"""Data-set registry, lookup with checksum verification, download recipes and typed loaders.

Data files are never committed (their licences forbid redistribution). `path(dataset, filename)` looks in
`$BOOK_DATA_DIR`, then `<repo>/data/`, verifies the md5 and raises `DataError` with the file, the places
searched and how to get it. `download(dataset)` (used by `make data`) fetches a data set from its pinned
public source, applies the recorded transformation and refuses any file whose md5 does not match.
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
import urllib.request
import zipfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, NamedTuple

from lib.utils import REPO_ROOT

RAW = "https://raw.githubusercontent.com"


class DataError(FileNotFoundError):
    """A data file is missing, truncated or corrupted."""


@dataclass(frozen=True)
class Dataset:
    """One data set: its files with md5, where they come from, licence and citation."""

    name: str
    files: dict[str, str]  # filename -> md5
    source: str  # pinned repository URL (commit included)
    licence: str
    citation: str
    recipe: Callable[["Dataset", Path], None] | None = field(default=None, compare=False, repr=False)


def _fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=120) as response:  # noqa: S310 (pinned https/file URLs)
        return response.read()


def _copy_files(base: str, mapping: dict[str, str]) -> Callable[[Dataset, Path], None]:
    """Recipe: download each `source path` of `base` to `filename` unchanged."""

    def run(dataset: Dataset, target: Path) -> None:
        for filename, source_path in mapping.items():
            _write_verified(dataset, target, filename, _fetch(f"{base}/{source_path}"))

    return run


def _gunzip(base: str, filename: str, source_path: str) -> Callable[[Dataset, Path], None]:
    def run(dataset: Dataset, target: Path) -> None:
        _write_verified(dataset, target, filename, gzip.decompress(_fetch(f"{base}/{source_path}")))

    return run


def _zip_members(base: str, zip_path: str, members: dict[str, str], plain: dict[str, str]):
    def run(dataset: Dataset, target: Path) -> None:
        archive = zipfile.ZipFile(io.BytesIO(_fetch(f"{base}/{zip_path}")))
        for filename, member in members.items():
            _write_verified(dataset, target, filename, archive.read(member))
        _copy_files(base, plain)(dataset, target)

    return run


def _both(*recipes: Callable[[Dataset, Path], None]) -> Callable[[Dataset, Path], None]:
    """Recipe: run several recipes in turn (a data set whose files come from more than one source)."""

    def run(dataset: Dataset, target: Path) -> None:
        for recipe in recipes:
            recipe(dataset, target)

    return run


def restore_rte_split(tables: list[bytes]) -> tuple[bytes, bytes]:
    """Rebuild the official GLUE RTE train/dev files from a re-split that kept GLUE indices.

    The source repository re-split train+dev at random and stored official dev rows with index + 2490.
    Rows with index < 2490 form train, the rest form dev (index - 2490), each sorted by index."""
    header, rows = None, []
    for table in tables:
        lines = table.decode("utf-8").splitlines()
        header = lines[0]
        rows += [line.split("\t", 1) for line in lines[1:] if line]
    train = sorted((int(i), rest) for i, rest in rows if int(i) < 2490)
    dev = sorted((int(i) - 2490, rest) for i, rest in rows if int(i) >= 2490)

    def dump(part: list[tuple[int, str]]) -> bytes:
        return ("\n".join([header] + [f"{i}\t{rest}" for i, rest in part]) + "\n").encode("utf-8")

    return dump(train), dump(dev)


def _rte_recipe(base: str) -> Callable[[Dataset, Path], None]:
    def run(dataset: Dataset, target: Path) -> None:
        tables = [_fetch(f"{base}/glue_data/RTE/{split}.tsv") for split in ("train", "dev", "test")]
        train, dev = restore_rte_split(tables)
        _write_verified(dataset, target, "train.tsv", train)
        _write_verified(dataset, target, "dev.tsv", dev)

    return run


def md5_of(path_or_bytes: Path | bytes) -> str:
    """Hex md5 of a file or of bytes."""
    if isinstance(path_or_bytes, bytes):
        return hashlib.md5(path_or_bytes).hexdigest()  # noqa: S324 (integrity, not security)
    digest = hashlib.md5()  # noqa: S324
    with open(path_or_bytes, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_verified(dataset: Dataset, target: Path, filename: str, payload: bytes) -> None:
    expected = dataset.files[filename]
    got = md5_of(payload)
    if got != expected:
        raise DataError(
            f"{dataset.name}/{filename}: downloaded bytes have md5 {got}, expected {expected}; "
            "the file was not written (source changed or transfer corrupted)."
        )
    (target / dataset.name).mkdir(parents=True, exist_ok=True)
    (target / dataset.name / filename).write_bytes(payload)


def _repo(owner_name: str, commit: str) -> tuple[str, str]:
    return f"https://github.com/{owner_name}/tree/{commit}", f"{RAW}/{owner_name}/{commit}"


_KGCLUE_URL, _KGCLUE_RAW = _repo("CLUEbenchmark/KgCLUE", "c129972c6b5baf982d3685bfa6d1b0a36399db35")
_DUEE_URL, _DUEE_RAW = _repo("qiufengyuyi/event_extraction", "03a48d394c25626d3d78456c8939cc6df7264ce3")
# The official DuEE 1.0 train split is not in the repository above; a second pinned source keeps it as a zip.
_DUEE_TRAIN_URL, _DUEE_TRAIN_RAW = _repo("sixone-Jiang/Picgo", "61bff8cada4f605ddf83dac3f5e1b091de587879")
_DUIE_URL, _DUIE_RAW = _repo("JunnYu/GPLinker_pytorch", "e00545b319f74354c965eef3c81ef13f776bd232")
_RTE_URL, _RTE_RAW = _repo("footprinthere/AttAttr-Cutoff", "2ac92f2fdee447af8e66689945003deff461b106")
_SCN_URL, _SCN_RAW = _repo("shawroad/CoSENT_Pytorch", "ddb08479cc8d9a472b131cfd4160ddd86f905c22")
_STSB_URL, _STSB_RAW = _repo("shibing624/text2vec", "8e90a0f171286ac9a47b5bf492612a3b38c2d3f5")
_WEBNLG_URL, _WEBNLG_RAW = _repo("EduKgs/entity_relation", "fba4533ea2595eadbb5435e9580e56584ad25b57")

_SCN_TASKS = {
    "ATEC": ("valid", "test"), "BQ": ("valid", "test"), "LCQMC": ("valid", "test"),
    "PAWSX": ("valid", "test"), "STS-B": ("train", "valid", "test"),
}
_WEBNLG_FILES = [f"{v}/{s}" for v in ("WebNLG", "WebNLG-star")
                 for s in ("rel2id.json", "train_triples.json", "val_triples.json", "test_triples.json")]

REGISTRY: dict[str, Dataset] = {
    d.name: d
    for d in [
        Dataset(
            "bert-base-chinese-vocab",
            {"vocab.txt": "3b5b76c4aef48ecf8cb3abaafe960f09"},
            _KGCLUE_URL, "Apache-2.0 (Google BERT vocabulary)",
            "Devlin et al., BERT, NAACL 2019.",
            _copy_files(_KGCLUE_RAW, {"vocab.txt":
                "baselines/ner_re/prev_trained_model/chinese_rbt3_L-3_H-768_A-12/vocab.txt"}),
        ),
        Dataset(
            "duee1.0",
            {"dev.jsonl": "0d5b5f8dc3602e5f9a7487f331e45549",
             "event_schema.jsonl": "3cdb8c23af2341bd45159a9bd696d74c",
             "sample_data.jsonl": "53756d9d77a4921a63aa7bd2ea8e6797",
             "test1.jsonl": "017896c1203793ca6695c434eb7bf9ad",
             "train.jsonl": "d0d1b9ec3312c4cc8fde801e1e16e83e"},
            f"{_DUEE_URL} (train.jsonl: {_DUEE_TRAIN_URL}, duee_train.json.zip)", "Baidu LIC2020 participant agreement: non-commercial research or teaching only; "
            "no redistribution",
            "Li et al., DuEE: A Large-Scale Dataset for Chinese Event Extraction in Real-World Scenarios, NLPCC 2020.",
            _both(_copy_files(_DUEE_RAW, {f: f"data/{f.replace('.jsonl', '.json')}" for f in
                                          ("dev.jsonl", "event_schema.jsonl", "sample_data.jsonl", "test1.jsonl")}),
                  _zip_members(_DUEE_TRAIN_RAW, "duee_train.json.zip",
                               {"train.jsonl": "duee_train.json/duee_train.json"}, {})),
        ),
        Dataset(
            "duie-lic2019-sample",
            {"all_50_schemas.jsonl": "557f9fcd31ca7b9735bfdcde28008db9",
             "dev_data.jsonl": "3a5cab81053178fe1f028c64890e20ba",
             "train_data.jsonl": "cc8b7a653421e6ffc0a0566f4336c522"},
            _DUIE_URL, "Baidu LIC2019 competition data: research/teaching only; no redistribution",
            "Li et al., DuIE: A Large-scale Chinese Dataset for Information Extraction, NLPCC 2019.",
            _zip_members(_DUIE_RAW, "data/spo.zip",
                         {"train_data.jsonl": "train_data.json", "dev_data.jsonl": "dev_data.json"},
                         {"all_50_schemas.jsonl": "data/all_50_schemas"}),
        ),
        Dataset(
            "glue-rte",
            {"dev.tsv": "973cb4178d4534cf745a01c309d4a66c", "train.tsv": "d2844f558d111a16503144bb37a8165f"},
            _RTE_URL, "PASCAL RTE 1/2/3/5 as packaged by GLUE; no explicit licence verified",
            "Wang et al., GLUE, ICLR 2019; Dagan et al. 2006; Bar Haim et al. 2006; Giampiccolo et al. 2007; "
            "Bentivogli et al. 2009.",
            _rte_recipe(_RTE_RAW),
        ),
        Dataset(
            "kgclue",
            {"dev.json": "c39bc291b9bced79ed037ab8a4cf75c4", "test.json": "ebf6b82e62bf8782b74de40da90ebc86",
             "test_public.json": "2b61116027a7153212978a695369774b",
             "train.json": "37e5662ab1bbd84ede564437478a83c8"},
            _KGCLUE_URL, "no licence stated (README: 'being added')",
            "CLUE team, KgCLUE: a large-scale Chinese KBQA benchmark, 2021.",
            _copy_files(_KGCLUE_RAW, {f: f"datasets/{f}" for f in
                                      ("dev.json", "test.json", "test_public.json", "train.json")}),
        ),
        Dataset(
            "senteval-cn",
            {"ATEC.test.tsv": "4851ce07ad546c5cf83c095154381e35", "ATEC.valid.tsv": "b828b39221d7d7b2fa0fb878c96c3269",
             "BQ.test.tsv": "92273a1afb213110ac3586313861e115", "BQ.valid.tsv": "e05c853fe01c3af95612f68d65d2ab9d",
             "LCQMC.test.tsv": "8cfdb80f1f6d4f632527f6223795a7c2",
             "LCQMC.valid.tsv": "089329fb44ef26155baef9c9c8c823ba",
             "PAWSX.test.tsv": "46624c3d0dd9295e312dfb756b073df7",
             "PAWSX.valid.tsv": "0a7a5b252f8b6fc1c06acc0be515880d",
             "STS-B.test.tsv": "a16b4abe743122383cbe6d140974d711",
             "STS-B.train.tsv": "dea7a3d5febf9aba424a137d7de61bf7",
             "STS-B.valid.tsv": "904a42bbbb73c2c05745b4225582d6cb"},
            _SCN_URL, "per task, research/teaching use (ATEC, BQ, LCQMC on request; PAWS-X free); not verified",
            "Chen et al. 2018 (BQ); Liu et al. 2018 (LCQMC); Yang et al. 2019 (PAWS-X); Cer et al. 2017 (STS-B).",
            _copy_files(_SCN_RAW, {f"{t}.{s}.tsv": f"data/{t}/{t}.{s}.data"
                                   for t, splits in _SCN_TASKS.items() for s in splits}),
        ),
        Dataset(
            "stsb-en",
            {"stsbenchmark.tsv": "e672423a15533ace3390420084b55bc7"},
            _STSB_URL, "scores CC BY-SA 4.0; sentences keep their sources' licences",
            "Cer et al., SemEval-2017 Task 1: Semantic Textual Similarity, 2017.",
            _gunzip(_STSB_RAW, "stsbenchmark.tsv", "examples/data/English-STS-B/stsbenchmark.tsv.gz"),
        ),
        Dataset(
            "webnlg-casrel",
            {"WebNLG-star/rel2id.json": "308adbde7bd5e1ddf22cc2680a58c56d",
             "WebNLG-star/test_triples.json": "0c93ad053ae52ce6d4b9d21fe34b98bd",
             "WebNLG-star/train_triples.json": "9402cb9418f9b2b50d4ab65953debe8a",
             "WebNLG-star/val_triples.json": "52bd3abcffe1c71f8cf2fc989eea04e5",
             "WebNLG/rel2id.json": "4aac82228d9d6f7ffe98958e3566d5a3",
             "WebNLG/test_triples.json": "ea358d83a003e3b58f1b3a27eecb27c4",
             "WebNLG/train_triples.json": "f2f78affe47070d52288c72dae1aac61",
             "WebNLG/val_triples.json": "2e4332b5eb410a0f27f915a3fc4c47bd"},
            _WEBNLG_URL, "WebNLG: CC BY-NC-SA 4.0 (DBpedia-derived parts CC BY-SA 3.0 / GFDL)",
            "Gardent et al., The WebNLG Challenge, INLG 2017; splits from Zeng et al., CopyRE, ACL 2018.",
            _copy_files(_WEBNLG_RAW, {f: f"data/{f}" for f in _WEBNLG_FILES}),
        ),
    ]
}


def search_dirs() -> list[Path]:
    """Folders searched for data, in order: $BOOK_DATA_DIR (if set), then <repo>/data."""
    dirs = [Path(os.environ["BOOK_DATA_DIR"])] if os.environ.get("BOOK_DATA_DIR") else []
    return dirs + [REPO_ROOT / "data"]


def _dataset(name: str) -> Dataset:
    if name not in REGISTRY:
        raise ValueError(f"dataset must be one of {sorted(REGISTRY)}, got {name!r}")
    return REGISTRY[name]


@lru_cache(maxsize=None)
def _verified(path: Path, stamp: tuple[int, int, int, int], expected: str) -> bool:
    """md5 check, done once per process per file state. `stamp` is (inode, size, mtime_ns, ctime_ns): a file
    rewritten in place changes its ctime even when its size and mtime are restored (``touch -d`` cannot set
    ctime), and a replaced file changes its inode, so either is verified again."""
    return md5_of(path) == expected


def path(dataset: str, filename: str) -> Path:
    """Absolute path of a verified data file.

    Raises `DataError` if the file is in none of `search_dirs()` or if every copy found fails its md5."""
    spec = _dataset(dataset)
    if filename not in spec.files:
        raise ValueError(f"filename for dataset {dataset!r} must be one of {sorted(spec.files)}, got {filename!r}")
    expected, bad = spec.files[filename], []
    for folder in search_dirs():
        candidate = folder / dataset / filename
        if candidate.is_file():
            stat = candidate.stat()
            if _verified(candidate, (stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns), expected):
                return candidate
            bad.append(str(candidate))
    searched = ", ".join(str(folder / dataset / filename) for folder in search_dirs())
    problem = f"found only corrupted copies (md5 differs from {expected}): {', '.join(bad)}" if bad else "not found"
    raise DataError(
        f"data file {dataset}/{filename} {problem}. Looked in: {searched}. "
        f"Get it with `make data` (downloads from {spec.source} and verifies md5), "
        "or point BOOK_DATA_DIR at a folder that holds a verified copy."
    )


def download(dataset: str, target: Path | None = None) -> Path:
    """Download `dataset` from its pinned source into `target` (default <repo>/data), verifying every md5."""
    spec = _dataset(dataset)
    target = Path(target) if target is not None else REPO_ROOT / "data"
    if spec.recipe is None:
        raise DataError(f"dataset {dataset!r} has no download recipe; see {spec.source}")
    spec.recipe(spec, target)
    return target / dataset


# ----------------------------------------------------------------------------------------- records
class ScoredPair(NamedTuple):
    sentence1: str
    sentence2: str
    score: float


class LabeledPair(NamedTuple):
    sentence1: str
    sentence2: str
    label: int


class KgQuestion(NamedTuple):
    id: int
    question: str
    subject: str
    relation: str
    object: str


class Triple(NamedTuple):
    subject: str
    predicate: str
    object: str


class RelationSentence(NamedTuple):
    text: str
    triples: list[Triple]


class Argument(NamedTuple):
    role: str
    text: str
    start: int


class Event(NamedTuple):
    event_type: str
    trigger: str
    trigger_start: int
    arguments: list[Argument]


class EventSentence(NamedTuple):
    id: str
    text: str
    events: list[Event]


def _check_split(split: str, allowed: tuple[str, ...]) -> None:
    if split not in allowed:
        raise ValueError(f"split must be one of {allowed}, got {split!r}")


class DataFormatError(ValueError):
    """A data file's contents cannot be parsed (possible only when its checksum was bypassed or changed)."""


def _where(file: Path) -> str:
    return f"{file.parent.name}/{file.name} ({file})"


def _read_text(file: Path) -> str:
    """The file decoded as UTF-8; a decoding error names the file and line."""
    payload = file.read_bytes()
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError as error:
        line = payload[:error.start].count(b"\n") + 1
        raise DataFormatError(f"{_where(file)} line {line}: not valid UTF-8 ({error.reason} at byte "
                              f"{error.start}); re-download it with `make data`") from error


def _read_tsv(file: Path) -> list[tuple[str, list[str]]]:
    """(line number, fields) for every row of a tab-separated file."""
    reader = csv.reader(io.StringIO(_read_text(file), newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    return [(f"line {reader.line_num}", row) for row in reader]


def _read_jsonl(file: Path) -> list[tuple[str, dict]]:
    """(line number, object) for every non-blank line of a JSON-lines file."""
    items = []
    for number, line in enumerate(_read_text(file).splitlines(), start=1):
        if line.strip():
            try:
                items.append((f"line {number}", json.loads(line)))
            except json.JSONDecodeError as error:
                raise DataFormatError(f"{_where(file)} line {number}: invalid JSON ({error.msg} at column "
                                      f"{error.colno})") from error
    return items


def _read_json(file: Path) -> object:
    """The one JSON document of a file."""
    try:
        return json.loads(_read_text(file))
    except json.JSONDecodeError as error:
        raise DataFormatError(f"{_where(file)} line {error.lineno}: invalid JSON ({error.msg} at column "
                              f"{error.colno})") from error


def _parse(file: Path, items: list[tuple[str, object]], build: Callable[[object], object]) -> list:
    """`build(item)` for every (place, item), place like "line 12" or "item 5"; a missing field, short row or
    bad value raises `DataFormatError` naming the data set, file and place."""
    records = []
    for place, item in items:
        try:
            records.append(build(item))
        except (KeyError, IndexError, ValueError, TypeError, AttributeError) as error:
            raise DataFormatError(f"{_where(file)} {place}: cannot read {type(error).__name__}: {error} "
                                  f"(from {str(item)[:120]!r}); re-download it with `make data`") from error
    return records


def _fields(row: list[str], count: int) -> list[str]:
    if len(row) != count:
        raise IndexError(f"expected {count} tab-separated columns, got {len(row)}")
    return row


# ---------------------------------------------------------------------------------------- loaders
def load_stsb_en(split: str) -> list[ScoredPair]:
    """English STS Benchmark: `split` in train (5,749) / dev (1,500) / test (1,379); score in [0, 5]."""
    _check_split(split, ("train", "dev", "test"))
    file = path("stsb-en", "stsbenchmark.tsv")
    rows = _read_tsv(file)
    header = rows[0][1]
    missing = [n for n in ("split", "score", "sentence1", "sentence2") if n not in header]
    if missing:
        raise DataFormatError(f"{_where(file)} line 1: header lacks columns {missing}, got {header}")
    col = {name: header.index(name) for name in ("split", "score", "sentence1", "sentence2")}
    parsed = _parse(file, rows[1:], lambda r: (_fields(r, len(header))[col["split"]], ScoredPair(
        r[col["sentence1"]], r[col["sentence2"]], float(r[col["score"]]))))
    return [pair for part, pair in parsed if part == split]


def load_senteval_cn(task: str, split: str) -> list[ScoredPair]:
    """Chinese sentence pairs (ATEC, BQ, LCQMC, PAWSX: labels 0/1; STS-B: integer scores 0–5).

    Only STS-B has a `train` split here; the other four have `valid` and `test`. Every row must have three
    columns (sentence1, sentence2, score): a short or long row raises `DataFormatError`, never skipped."""
    if task not in _SCN_TASKS:
        raise ValueError(f"task must be one of {tuple(_SCN_TASKS)}, got {task!r}")
    _check_split(split, _SCN_TASKS[task])
    file = path("senteval-cn", f"{task}.{split}.tsv")
    return _parse(file, _read_tsv(file), lambda r: ScoredPair(*_fields(r, 3)[:2], float(r[2])))


def load_glue_rte(split: str) -> list[LabeledPair]:
    """GLUE RTE, official split: train (2,490) / dev (277); label 1 = entailment, 0 = not_entailment."""
    _check_split(split, ("train", "dev"))
    file = path("glue-rte", f"{split}.tsv")
    labels = {"entailment": 1, "not_entailment": 0}
    return _parse(file, _read_tsv(file)[1:], lambda r: LabeledPair(_fields(r, 4)[1], r[2], labels[r[3]]))


def _kg_question(item: dict) -> KgQuestion:
    parts = [part.strip() for part in item["answer"].split("|||")]
    if len(parts) != 3:
        raise ValueError(f"answer must be 'subject ||| relation ||| object', got {item['answer']!r}")
    return KgQuestion(int(item["id"]), item["question"], *parts)


def load_kgclue(split: str) -> list[KgQuestion]:
    """KgCLUE question–answer pairs; the answer 'S ||| P ||| O' is split into subject, relation, object."""
    _check_split(split, ("train", "dev", "test_public"))
    file = path("kgclue", f"{split}.json")
    return _parse(file, _read_jsonl(file), _kg_question)


_WEBNLG_VARIANTS = {"exact": "WebNLG", "star": "WebNLG-star"}


def _triple(values: list) -> Triple:
    if len(values) != 3:
        raise ValueError(f"a triple must have 3 parts, got {values!r}")
    return Triple(*values)


def load_webnlg(split: str, variant: str = "exact") -> list[RelationSentence]:
    """WebNLG in CasRel format: `split` train (5,019) / val (500) / test (703); `variant` exact or star."""
    _check_split(split, ("train", "val", "test"))
    if variant not in _WEBNLG_VARIANTS:
        raise ValueError(f"variant must be one of {tuple(_WEBNLG_VARIANTS)}, got {variant!r}")
    file = path("webnlg-casrel", f"{_WEBNLG_VARIANTS[variant]}/{split}_triples.json")
    items = _read_json(file)
    numbered = [(f"item {i}", it) for i, it in enumerate(items)] if isinstance(items, list) else [("item 0", items)]
    return _parse(file, numbered, lambda it: RelationSentence(it["text"], [_triple(t) for t in it["triple_list"]]))


def load_webnlg_relations(variant: str = "exact") -> list[str]:
    """Relation names of WebNLG, in id order."""
    if variant not in _WEBNLG_VARIANTS:
        raise ValueError(f"variant must be one of {tuple(_WEBNLG_VARIANTS)}, got {variant!r}")
    file = path("webnlg-casrel", f"{_WEBNLG_VARIANTS[variant]}/rel2id.json")
    table = _read_json(file)

    def names(table: list) -> list[str]:
        rel2id = table[-1]  # exact: [{rel: id}], star: [{id: rel}, {rel: id}]
        return [rel for rel, _ in sorted(rel2id.items(), key=lambda kv: int(kv[1]))]

    return _parse(file, [("table", table)], names)[0]


def load_duie(split: str) -> list[RelationSentence]:
    """DuIE 1.0 sample: train (2,000 sentences) / dev (200); triples (subject, predicate, object)."""
    _check_split(split, ("train", "dev"))
    file = path("duie-lic2019-sample", f"{split}_data.jsonl")
    return _parse(file, _read_jsonl(file), lambda it: RelationSentence(
        it["text"], [Triple(s["subject"], s["predicate"], s["object"]) for s in it["spo_list"]]))


def load_duie_schema() -> list[dict]:
    """The 50 DuIE predicates with subject and object types."""
    return [item for _, item in _read_jsonl(path("duie-lic2019-sample", "all_50_schemas.jsonl"))]


def _event_sentence(it: dict) -> EventSentence:
    events = [Event(e["event_type"], e["trigger"], int(e["trigger_start_index"]),
                    [Argument(a["role"], a["argument"], int(a["argument_start_index"])) for a in e["arguments"]])
              for e in it.get("event_list", [])]
    return EventSentence(it["id"], it["text"], events)


def load_duee(split: str) -> list[EventSentence]:
    """DuEE 1.0 labelled sentences: `split` train (11,908, the official train split), dev (1,498) or sample
    (500); offsets are character offsets. 334 sample sentences are also in train: never train on train and
    score on sample."""
    _check_split(split, ("train", "dev", "sample"))
    file = path("duee1.0", {"sample": "sample_data.jsonl", "dev": "dev.jsonl", "train": "train.jsonl"}[split])
    return _parse(file, _read_jsonl(file), _event_sentence)


def load_duee_schema() -> dict[str, list[str]]:
    """DuEE event types (65) -> their roles (217 in total)."""
    file = path("duee1.0", "event_schema.jsonl")
    pairs = _parse(file, _read_jsonl(file), lambda it: (it["event_type"], [r["role"] for r in it["role_list"]]))
    return dict(pairs)


def main(argv: list[str] | None = None) -> None:
    """`python -m lib.data [names...]`: download missing data sets into <repo>/data and verify them."""
    import sys

    names = (argv if argv is not None else sys.argv[1:]) or sorted(REGISTRY)
    for name in names:
        spec = _dataset(name)
        try:
            for filename in spec.files:
                path(name, filename)
            print(f"{name}: present and verified")
        except DataError:
            print(f"{name}: downloading from {spec.source}")
            download(name)
            print(f"{name}: downloaded and verified")


if __name__ == "__main__":
    main()
