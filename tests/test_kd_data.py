"""kd.data: the MR task and its fixed split, generic CSV/TSV/JSONL files, GLUE through `datasets`
on local files, and every bad-data case (message names file, line/column, expectation)."""
import json

import pytest

from kd import data as D

from kd_helpers import write_lines


def test_mr_counts_and_split_checksum():
    mr = D.load_mr()
    assert (len(mr.train), len(mr.dev), len(mr.test)) == (8454, 1057, 1057)
    every = mr.train + mr.dev + mr.test
    assert len({e.id for e in every}) == 10568
    assert sum(e.label for e in every) == 5242  # positives (data.md: 5,242 positive, 5,326 negative)
    assert D.mr_split_checksum(mr) == D.MR_SPLIT_SHA256


def test_split_depends_only_on_ids_and_seed():
    ids = [str(i) for i in range(100)]
    a = D.split_ids(ids, 1)
    assert a == D.split_ids(list(reversed(ids)), 1)
    assert a != D.split_ids(ids, 2)
    assert [len(p) for p in a] == [80, 10, 10]


def test_mr_bad_archive(tmp_path):
    bad = tmp_path / "x.tar.gz"
    bad.write_bytes(b"not a tar")
    with pytest.raises(D.DataError, match=r"x.tar.gz: cannot read .*expected the vaderSentiment==3.3.2 sdist"):
        D.read_mr_archive(str(bad))


def test_csv_tsv_jsonl_classification_and_pairs(tmp_path):
    csv_f = write_lines(tmp_path / "train.csv", ["a,b,y", '"hello, world",x,pos', "bye,z,neg"])
    tsv_f = write_lines(tmp_path / "dev.tsv", ["a\tb\ty", "hi\tthere\tneg"])
    jsonl_f = write_lines(tmp_path / "test.jsonl", [json.dumps({"a": "yo", "b": "b", "y": "pos"})])
    t = D.load_files(csv_f, tsv_f, jsonl_f, text_column="a", text_pair_column="b", label_column="y")
    assert t.labels == ["neg", "pos"] and t.num_labels == 2
    assert (t.train[0].text, t.train[0].text_pair, t.train[0].label) == ("hello, world", "x", 1)
    assert t.dev[0].label == 0 and t.test[0].label == 1
    # integer labels sort numerically; JSON ints and CSV strings are the same class
    tr = write_lines(tmp_path / "n.csv", ["text,label", "a,10", "b,2", "c,1"])
    dv = write_lines(tmp_path / "n.jsonl", [json.dumps({"text": "d", "label": 10})])
    t = D.load_files(tr, dv)
    assert t.labels == ["1", "2", "10"] and t.dev[0].label == 2


def test_regression_files(tmp_path):
    tr = write_lines(tmp_path / "r.csv", ["text,score", "a,1.5", "b,-2"])
    t = D.load_files(tr, tr, label_column="score", task_type="regression")
    assert [e.label for e in t.train] == [1.5, -2.0] and t.labels == [] and t.num_labels == 1


def test_bad_data_messages(tmp_path):
    good = write_lines(tmp_path / "good.csv", ["text,label", "fine,pos", "bad,neg"])
    with pytest.raises(D.DataError, match=r"missing.csv: no such file; expected a CSV, TSV or JSONL data file"):
        D.load_files(str(tmp_path / "missing.csv"), good)
    with pytest.raises(D.DataError, match=r"good.csv line 2: no column 'sentence'; the columns are \['label', 'text'\]"):
        D.load_files(good, good, text_column="sentence")
    empty = write_lines(tmp_path / "empty.csv", ["text,label"])
    with pytest.raises(D.DataError, match=r"empty.csv: the dev split is empty; expected at least one example"):
        D.load_files(good, empty)
    unknown = write_lines(tmp_path / "unk.csv", ["text,label", "x,pos", "y,meh"])
    with pytest.raises(D.DataError, match=r"unk.csv line 3, column 'label': unknown label 'meh'; expected one of the train file's labels \['neg', 'pos'\]"):
        D.load_files(good, unknown)
    reg = write_lines(tmp_path / "reg.jsonl", [json.dumps({"text": "a", "label": 1.0}), json.dumps({"text": "b", "label": "high"})])
    with pytest.raises(D.DataError, match=r"reg.jsonl line 2, column 'label': 'high' is not a number; expected a finite numeric regression target"):
        D.load_files(reg, reg, task_type="regression")
    nan = write_lines(tmp_path / "nan.csv", ["text,label", "a,nan"])
    with pytest.raises(D.DataError, match=r"nan.csv line 2, column 'label': 'nan' is not a number"):
        D.load_files(nan, nan, task_type="regression")
    raw = tmp_path / "latin1.tsv"
    raw.write_bytes("text\tlabel\nok\tpos\ncaf\xe9\tneg\n".encode("latin-1"))
    with pytest.raises(D.DataError, match=r"latin1.tsv line 3, byte 4 of the line: undecodable byte 0xe9; expected UTF-8 text"):
        D.load_files(str(raw), good)
    ragged = write_lines(tmp_path / "ragged.csv", ["text,label", "a,b,c"])
    with pytest.raises(D.DataError, match=r"ragged.csv line 2: 3 fields; expected 2"):
        D.load_files(ragged, good)
    broken = write_lines(tmp_path / "broken.jsonl", ['{"text": "a", "label": 1}', '{"text": '])
    with pytest.raises(D.DataError, match=r"broken.jsonl line 2, column \d+: invalid JSON"):
        D.load_files(broken, good)
    with pytest.raises(D.DataError, match=r"data.txt: unknown file type; expected a name ending in .csv, .tsv or .jsonl"):
        D.load_files(str(tmp_path / "data.txt"), good)
    with pytest.raises(ValueError, match="task_type='ranking'"):
        D.load_files(good, good, task_type="ranking")


def test_glue_loader_on_local_files(tmp_path):
    pytest.importorskip("datasets")
    train = write_lines(tmp_path / "train.csv", ["sentence1,sentence2,label,idx", "a b,c d,1,0", "e f,g h,0,1"])
    dev = write_lines(tmp_path / "validation.csv", ["sentence1,sentence2,label,idx", "i j,k l,1,0"])
    t = D.load_glue("mrpc", data_files={"train": train, "validation": dev}, cache_dir=str(tmp_path / "hf"))
    assert t.name == "glue-mrpc" and t.task_type == "classification" and t.num_labels == 2
    assert (t.train[0].text, t.train[0].text_pair, t.train[0].label) == ("a b", "c d", 1)
    assert len(t.dev) == 1 and t.test == []
    bad = write_lines(tmp_path / "bad.csv", ["sentence1,label", "a,1"])
    with pytest.raises(D.DataError, match=r"split 'train': no column 'sentence2'"):
        D.load_glue("mrpc", data_files={"train": bad, "validation": bad}, cache_dir=str(tmp_path / "hf"))
    out_of_range = write_lines(tmp_path / "oor.csv", ["sentence1,sentence2,label,idx", "a,b,7,0"])
    with pytest.raises(D.DataError, match=r"row 0, column 'label': 7; expected a class in \[0, 2\)"):
        D.load_glue("mrpc", data_files={"train": out_of_range, "validation": dev}, cache_dir=str(tmp_path / "hf"))
    other = write_lines(tmp_path / "other.csv", ["x,y", "1,2"])
    with pytest.raises(D.DataError, match=r"other.csv, .*validation.csv: `datasets` cannot read them as csv .*expected GLUE 'mrpc' files"):
        D.load_glue("mrpc", data_files={"train": other, "validation": dev}, cache_dir=str(tmp_path / "hf"))
    with pytest.raises(ValueError, match="glue task 'nope'"):
        D.load_glue("nope")


def test_encoded_batches_pad_dynamically():
    from transformers import AutoTokenizer

    from kd.models import teacher_base_path

    tok = AutoTokenizer.from_pretrained(teacher_base_path())
    ex = [D.Example("a b c d e", 1), D.Example("f", 0)]
    enc = D.Encoded(ex, tok, 5, "classification")
    b = enc.batch([0, 1])
    assert b["input_ids"].shape == (2, 5) and b["attention_mask"].tolist() == [[1] * 5, [1, 1, 1, 0, 0]]
    assert enc.batch([1])["input_ids"].shape == (1, 3)
