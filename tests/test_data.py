"""lib.data: every registered file is found and verified; corruption and absence give clear errors;
the download recipes rebuild byte-identical files from a local mirror of the sources (file:// URLs)."""
import gzip
import json
import os
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


def _damaged_copy(tmp_path, monkeypatch, dataset, filename, damage):
    """A copy of a data file, damaged by `damage(bytes) -> bytes`, served as if its checksum had passed
    (a user who edited the registry's md5, or a future format change)."""
    good = data.path(dataset, filename)
    target = tmp_path / dataset / filename
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(damage(good.read_bytes()))
    monkeypatch.setattr(data, "path", lambda d, f: target if (d, f) == (dataset, filename) else good)
    return target


def test_invalid_json_line_names_data_set_file_and_line(tmp_path, monkeypatch):
    def cut_line_3(payload):
        lines = payload.split(b"\n")
        lines[2] = lines[2][: len(lines[2]) // 2]
        return b"\n".join(lines)

    _damaged_copy(tmp_path, monkeypatch, "kgclue", "dev.json", cut_line_3)
    with pytest.raises(data.DataFormatError, match=r"kgclue/dev.json .*line 3: invalid JSON"):
        data.load_kgclue("dev")


def test_bad_utf8_names_the_line(tmp_path, monkeypatch):
    def bad_byte_on_line_5(payload):
        lines = payload.split(b"\n")
        lines[4] = b"\xff" + lines[4]
        return b"\n".join(lines)

    _damaged_copy(tmp_path, monkeypatch, "duee1.0", "dev.jsonl", bad_byte_on_line_5)
    with pytest.raises(data.DataFormatError, match=r"duee1.0/dev.jsonl .*line 5: not valid UTF-8"):
        data.load_duee("dev")


def test_missing_field_names_the_line(tmp_path, monkeypatch):
    def drop_answer_on_line_2(payload):
        lines = payload.split(b"\n")
        item = json.loads(lines[1])
        del item["answer"]
        lines[1] = json.dumps(item, ensure_ascii=False).encode()
        return b"\n".join(lines)

    _damaged_copy(tmp_path, monkeypatch, "kgclue", "dev.json", drop_answer_on_line_2)
    with pytest.raises(data.DataFormatError, match=r"kgclue/dev.json .*line 2: cannot read KeyError: 'answer'"):
        data.load_kgclue("dev")


def test_senteval_row_with_a_missing_column_raises_instead_of_being_skipped(tmp_path, monkeypatch):
    def drop_score_on_line_7(payload):
        lines = payload.split(b"\n")
        lines[6] = lines[6].rsplit(b"\t", 1)[0]
        return b"\n".join(lines)

    _damaged_copy(tmp_path, monkeypatch, "senteval-cn", "PAWSX.valid.tsv", drop_score_on_line_7)
    with pytest.raises(data.DataFormatError, match=r"senteval-cn/PAWSX.valid.tsv .*line 7: .*3 tab-separated "
                                                   r"columns, got 2"):
        data.load_senteval_cn("PAWSX", "valid")


def test_rte_unknown_label_names_the_line(tmp_path, monkeypatch):
    _damaged_copy(tmp_path, monkeypatch, "glue-rte", "dev.tsv",
                  lambda p: p.replace(b"not_entailment", b"contradiction", 1))
    with pytest.raises(data.DataFormatError, match=r"glue-rte/dev.tsv .*line \d+: cannot read KeyError: "
                                                   r"'contradiction'"):
        data.load_glue_rte("dev")


def test_webnlg_item_with_a_short_triple_names_the_item(tmp_path, monkeypatch):
    def short_triple(payload):
        items = json.loads(payload)
        items[4]["triple_list"][0] = items[4]["triple_list"][0][:2]
        return json.dumps(items).encode()

    _damaged_copy(tmp_path, monkeypatch, "webnlg-casrel", "WebNLG/val_triples.json", short_triple)
    with pytest.raises(data.DataFormatError, match=r"WebNLG/val_triples.json .*item 4: .*3 parts"):
        data.load_webnlg("val")


def test_a_file_damaged_in_place_with_size_and_mtime_restored_is_refused(tmp_path, monkeypatch):
    good = data.path("glue-rte", "dev.tsv")
    copy = tmp_path / "glue-rte" / "dev.tsv"
    copy.parent.mkdir()
    copy.write_bytes(good.read_bytes())
    monkeypatch.setenv("BOOK_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(data, "REPO_ROOT", tmp_path / "repo")
    assert data.path("glue-rte", "dev.tsv") == copy  # verified once, remembered for this process
    stat = copy.stat()
    payload = bytearray(copy.read_bytes())
    payload[100] ^= 1  # one flipped bit, same size
    copy.write_bytes(bytes(payload))
    os.utime(copy, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # mtime restored as well
    assert copy.stat().st_size == stat.st_size and copy.stat().st_mtime_ns == stat.st_mtime_ns
    with pytest.raises(data.DataError, match="corrupted"):
        data.path("glue-rte", "dev.tsv")
