"""Dataset registry: local mirror, clear errors, deterministic subsampling."""
import json

import pytest

from pemnb import data


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def test_local_mirror_is_read_in_the_hub_schema(tmp_path, monkeypatch):
    rows = [{"sentence1": f"a{i}", "sentence2": f"b{i}", "label": i % 2, "idx": i} for i in range(10)]
    write_jsonl(tmp_path / "glue" / "rte" / "train.jsonl", rows)
    monkeypatch.setenv("PEMNB_DATA_DIR", str(tmp_path))
    ds = data.load("glue/rte", "train")
    assert len(ds) == 10 and ds[3] == rows[3]


def test_missing_dataset_says_where_it_looked_and_how_to_provide_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PEMNB_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(data.DataNotFound) as e:
        data.load("glue/mnli", "train")
    msg = str(e.value)
    assert str(tmp_path / "glue" / "mnli" / "train.jsonl") in msg
    assert "offline" in msg and "PEMNB_DATA_DIR" in msg
    assert "nyu-mll/glue (config mnli)" in msg  # the hub id it would have tried


def test_a_dataset_without_a_hub_copy_says_so_plainly(tmp_path, monkeypatch):
    monkeypatch.setenv("PEMNB_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    with pytest.raises(data.DataNotFound) as e:
        data.load("yelp_sentences", "train")  # online or not: nothing but a local file can provide it
    msg = str(e.value)
    assert "NO hub copy" in msg and str(tmp_path / "yelp_sentences" / "train.jsonl") in msg
    assert "internet" not in msg


def test_the_shipped_data_folder_is_the_default(monkeypatch):
    from pemnb.paths import SHIPPED_DATA, data_dir

    monkeypatch.delenv("PEMNB_DATA_DIR", raising=False)
    assert data_dir() == SHIPPED_DATA and (SHIPPED_DATA / "README.md").exists()
    assert len(data.load("glue/sst2", "validation")) == 872


def test_every_shipped_file_is_documented_with_its_row_count():
    from pemnb.paths import SHIPPED_DATA

    readme = (SHIPPED_DATA / "README.md").read_text()
    files = sorted(SHIPPED_DATA.rglob("*.jsonl"))
    assert files, "data/ ships no data"
    for f in files:
        folder = f.parent.relative_to(SHIPPED_DATA).as_posix()
        rows = sum(1 for line in f.open(encoding="utf-8") if line.strip())
        line = next((ln.replace("*", "") for ln in readme.splitlines() if ln.startswith(f"| `{folder}`")), None)
        assert line is not None, f"data/README.md has no row for {folder}"
        assert f"{f.stem} {rows}" in line or f"{f.name}` {rows}" in line or f"{rows} (the whole set)" in line, \
            f"data/README.md does not give {folder}/{f.name}'s {rows} rows"
    registered = {spec.local for spec in data.DATASETS.values() if spec.local}
    assert registered <= {p.relative_to(SHIPPED_DATA).as_posix() for p in SHIPPED_DATA.rglob("*") if p.is_dir()}


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset"):
        data.load("glue/nope", "train")


def test_subsample_is_deterministic_and_split_off_is_disjoint(tmp_path, monkeypatch):
    write_jsonl(tmp_path / "glue" / "sst2" / "validation.jsonl",
                [{"sentence": f"s{i}", "label": i % 2, "idx": i} for i in range(50)])
    monkeypatch.setenv("PEMNB_DATA_DIR", str(tmp_path))
    ds = data.load("glue/sst2", "validation")
    a, b, c = data.subsample(ds, 10, 0), data.subsample(ds, 10, 0), data.subsample(ds, 10, 1)
    assert a["idx"] == b["idx"] and a["idx"] != c["idx"] and len(a) == 10
    assert len(data.subsample(ds, 500, 0)) == 50
    first, rest = data.split_off(ds, 20, seed=0)
    assert len(first) == 20 and len(rest) == 30 and not set(first["idx"]) & set(rest["idx"])
    with pytest.raises(ValueError):
        data.split_off(ds, 50, seed=0)


def test_tokenize_classification_pairs_and_regression(tmp_path, monkeypatch):
    from pemnb.backbones import smoke_tokenizer

    write_jsonl(tmp_path / "glue" / "stsb" / "train.jsonl",
                [{"sentence1": "a cat", "sentence2": "a dog", "label": 2.4, "idx": 0}])
    monkeypatch.setenv("PEMNB_DATA_DIR", str(tmp_path))
    ex = data.tokenize_classification(data.load("glue/stsb", "train"), "glue/stsb", smoke_tokenizer(), 32)
    assert ex[0]["labels"] == pytest.approx(2.4) and isinstance(ex[0]["labels"], float)
    assert ex[0]["input_ids"].count(smoke_tokenizer().sep_token_id) == 2  # a sentence pair


def test_real_offline_data_has_the_documented_sizes(shared_data):
    assert len(data.load("glue/rte", "train")) == 2490
    assert len(data.load("glue/mnli", "validation_matched")) == 9815
    assert len(data.load("civil_comments", "test")) == 1674


def test_a_dataset_that_is_not_shipped_is_read_where_the_error_message_says(tmp_path, monkeypatch):
    """yelp_polarity (chapter 04 at paper) ships no local copy; its DataNotFound message names a file,
    and a local mirror that puts the file there is read (offline GPU machines, the paper dry run)."""
    monkeypatch.setenv("PEMNB_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(data.DataNotFound, match=r"yelp_polarity/train\.jsonl") as err:
        data.load("yelp_polarity", "train")
    assert "$PEMNB_DATA_DIR/yelp_polarity/train.jsonl" in str(err.value)
    write_jsonl(tmp_path / "yelp_polarity" / "train.jsonl", [{"text": "fine", "label": 1}, {"text": "bad", "label": 0}])
    assert data.load("yelp_polarity", "train")["label"] == [1, 0]
