"""lib.data: every registered file is found and verified; corruption and absence give clear errors;
the download recipes rebuild byte-identical files from a local mirror of the sources (file:// URLs)."""
import gzip
from pathlib import Path

import pytest

from lib import data



def test_every_registered_file_is_present_and_verified():
    for name, spec in data.REGISTRY.items():
        for filename in spec.files:
            assert data.path(name, filename).is_file()


def test_loaders_return_the_documented_counts():
    assert [len(data.load_stsb_en(s)) for s in ("train", "dev", "test")] == [5749, 1500, 1379]
    assert len(data.load_senteval_cn("ATEC", "valid")) == 20000
    assert len(data.load_senteval_cn("STS-B", "train")) == 5231
    rte = data.load_glue_rte("dev")
    assert len(rte) == 277 and sum(r.label for r in rte) == 146
    kg = data.load_kgclue("train")
    assert len(kg) == 18000 and all(q.subject and q.relation and q.object for q in kg)
    web = data.load_webnlg("test")
    assert len(web) == 703 and sum(len(s.triples) for s in web) == 1607
    assert len(data.load_webnlg_relations("exact")) == 216 and len(data.load_webnlg_relations("star")) == 171
    duie = data.load_duie("train")
    assert len(duie) == 2000 and sum(len(s.triples) for s in duie) == 4299
    dev = data.load_duee("dev")
    assert len(dev) == 1498 and sum(len(s.events) for s in dev) == 1790
    train = data.load_duee("train")
    assert len(train) == 11908 and sum(len(s.events) for s in train) == 13860
    assert sum(len(e.arguments) for s in train for e in s.events) == 28905
    assert not {s.id for s in train} & {s.id for s in dev}
    schema = data.load_duee_schema()
    assert len(schema) == 65 and sum(len(r) for r in schema.values()) == 217


def test_duee_offsets_point_at_their_strings():
    for sentence in data.load_duee("sample") + data.load_duee("train"):
        for event in sentence.events:
            assert sentence.text[event.trigger_start:event.trigger_start + len(event.trigger)] == event.trigger
            for arg in event.arguments:
                assert sentence.text[arg.start:arg.start + len(arg.text)] == arg.text


def test_missing_file_error_names_file_places_and_remedy(tmp_path, monkeypatch):
    monkeypatch.setenv("BOOK_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(data, "REPO_ROOT", tmp_path / "repo")
    with pytest.raises(data.DataError) as info:
        data.path("kgclue", "dev.json")
    message = str(info.value)
    assert "kgclue/dev.json" in message and str(tmp_path) in message and "make data" in message


def test_corrupted_or_truncated_file_is_never_used(tmp_path, monkeypatch):
    good = data.path("glue-rte", "dev.tsv")
    (tmp_path / "glue-rte").mkdir()
    truncated = tmp_path / "glue-rte" / "dev.tsv"
    truncated.write_bytes(good.read_bytes()[:-100])
    monkeypatch.setenv("BOOK_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(data, "REPO_ROOT", tmp_path / "repo")
    with pytest.raises(data.DataError, match="corrupted"):
        data.path("glue-rte", "dev.tsv")


def test_bad_arguments():
    with pytest.raises(ValueError, match="dataset"):
        data.path("nope", "x")
    with pytest.raises(ValueError, match="filename"):
        data.path("kgclue", "nope.json")
    with pytest.raises(ValueError, match="split"):
        data.load_stsb_en("validation")
    with pytest.raises(ValueError, match="task"):
        data.load_senteval_cn("XNLI", "test")


def mirror(monkeypatch, tmp_path, url_map):
    """Serve `url_map` {url suffix: bytes} through file:// by patching _fetch."""
    def fetch(url):
        for suffix, payload in url_map.items():
            if url.endswith(suffix):
                return payload
        raise AssertionError(f"unexpected URL {url}")

    monkeypatch.setattr(data, "_fetch", fetch)


def test_gunzip_recipe_rebuilds_verified_file(tmp_path, monkeypatch):
    original = data.path("stsb-en", "stsbenchmark.tsv").read_bytes()
    mirror(monkeypatch, tmp_path, {"stsbenchmark.tsv.gz": gzip.compress(original)})
    folder = data.download("stsb-en", tmp_path)
    assert (folder / "stsbenchmark.tsv").read_bytes() == original


def test_download_refuses_wrong_checksum(tmp_path, monkeypatch):
    mirror(monkeypatch, tmp_path, {"stsbenchmark.tsv.gz": gzip.compress(b"tampered")})
    with pytest.raises(data.DataError, match="md5"):
        data.download("stsb-en", tmp_path)
    assert not (tmp_path / "stsb-en" / "stsbenchmark.tsv").exists()


def test_rte_split_restoration_is_exact():
    train = data.path("glue-rte", "train.tsv").read_bytes()
    dev = data.path("glue-rte", "dev.tsv").read_bytes()
    header, *train_rows = train.decode().splitlines()
    dev_rows = dev.decode().splitlines()[1:]
    shifted = [f"{int(r.split(chr(9), 1)[0]) + 2490}\t{r.split(chr(9), 1)[1]}" for r in dev_rows]
    rows = train_rows + shifted
    parts = [rows[0::3], rows[1::3], rows[2::3]]  # a scrambled re-split, as in the source repository
    tables = [("\n".join([header] + part) + "\n").encode() for part in parts]
    assert data.restore_rte_split(tables) == (train, dev)


def test_duee_recipe_combines_both_sources(tmp_path, monkeypatch):
    """dev/sample/schema/test1 are plain copies; train.jsonl is a member of a zip from a second source."""
    import io
    import zipfile

    files = {f: data.path("duee1.0", f).read_bytes() for f in data.REGISTRY["duee1.0"].files}
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("duee_train.json/duee_train.json", files["train.jsonl"])
    url_map = {f"data/{f.replace('.jsonl', '.json')}": b for f, b in files.items() if f != "train.jsonl"}
    url_map["duee_train.json.zip"] = archive.getvalue()
    mirror(monkeypatch, tmp_path, url_map)
    folder = data.download("duee1.0", tmp_path)
    assert {f: (folder / f).read_bytes() for f in files} == files
