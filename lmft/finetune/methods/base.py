"""What a method type is: its settings, how it prepares the classifier, and its run.

A :class:`MethodType` is declared once, in its own module, as ``METHOD = MethodType(...)``:

- ``settings``: the keys a ``finetune.methods`` entry of this type takes, each a JSON-schema
  fragment with its ``default`` and ``description`` (:mod:`lmft.finetune.methods.settings` has the shared
  ones). The schema is the only place a default is written: :func:`lmft.finetune.methods.resolve_spec`
  validates an entry against it and fills the defaults in. A key of :data:`lmft.finetune.grid.GRID_KEYS`
  may also be given as a list (a grid).
- ``run(job) -> Outcome``: the method itself. The shared runner (:func:`lmft.finetune.stage.run_finetune`)
  builds the classifier, reads the k-shot tables, caps the test rows, calls ``run`` and writes the
  run directory from the :class:`Outcome`.
- ``prepare(clf, info)``: what the type does to a freshly built classifier before it runs (which
  parameters train, a new layer); called again when a finished run is rebuilt
  (:func:`lmft.finetune.runs.load_run`), so it must depend on the checkpoint's ``info`` only.
- ``trains``: whether the type tunes the parameters that ``mode`` selects (:mod:`lmft.models.params`):
  it then takes the ``mode`` keys (:data:`lmft.finetune.methods.settings.SELECT`), and its runs have
  checkpoints worth grafting and interpolating.

- ``generate(job) -> GenerationOutcome``: the method on a generation task (summarisation, QA),
  where :func:`lmft.finetune.generation.run_generation` is the runner: the type trains the causal LM if it
  trains and says which prompts to decode; the runner decodes and scores them. None: the type
  does not apply to generation tasks (a linear probe).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import pandas as pd
import torch

from lmft.data.tasks import GenerationTask, Task
from lmft.finetune.grid import GRID_KEYS
from lmft.finetune.lm_targets import LMSplit, lm_split, prompts, teacher_forced
from lmft.finetune.methods.settings import SELECT
from lmft.io import LmftError
from lmft.models.encode import encode_split
from lmft.models.evaluate import Evaluation, Split, evaluate
from lmft.models.heads import HEADS, Classifier
from lmft.paths import EVAL_SPLITS

# The workflow's keys of a method entry (rules/finetune.smk: which runs, and how they are scheduled).
WORKFLOW_KEYS = frozenset({"models", "tasks", "k", "seeds", "resources", "threads", "eval_cap"})
Settings = Mapping[str, Mapping[str, Any]]  # key -> JSON schema with "default" and "description"


@dataclass
class Job:
    """One fine-tuning job as a method type's ``run`` sees it."""

    task: Task
    frames: dict[str, pd.DataFrame]  # train, dev, test (test capped at eval_cap): k-shot rows as in the files
    clf: Classifier  # built and prepared, on ``device``
    tokenizer: Any
    cfg: dict[str, Any]  # the method's settings, defaults filled in
    info: dict[str, Any]  # what the checkpoint records and a rebuild reads (lmft.finetune.runs.build_for_run)
    device: torch.device
    seed: int  # the data seed
    model_seed: int  # the training seed
    resume_path: Path  # where a resumable training loop keeps its state (deleted by the runner at the end)
    pending_steps: Path  # where step checkpoints wait; the runner moves them to steps/ at the end
    fingerprint: str  # hash of the run's settings: resume state and step files of other settings are ignored
    on_step: Callable[[int], None] | None = None  # called after every training step (tests simulate a kill)

    def split(self, name: str) -> Split:
        """The k-shot table ``name`` tokenised for the classifier, as every stage reads the run."""
        return encode_split(self.frames[name], self.task, self.tokenizer, self.clf, prompt=self.cfg["prompt"],
                            max_length=self.cfg["max_length"], name=name)

    def evaluate(self, split: Split) -> Evaluation:
        """The classifier as it is on ``split`` (class logits, loss, the task's metric, ECE)."""
        return evaluate(self.clf, split, self.task.metric, int(self.cfg["eval_batch_size"]), self.device,
                        desc=split.name)


@dataclass
class Outcome:
    """What a run found; the runner writes it to the run directory (see :mod:`lmft.finetune.stage`)."""

    dev_metric: float  # of the kept model (the best dev step of a trainer)
    dev_loss: float
    test: Evaluation  # of the kept model
    curve: list[dict[str, Any]] | None = None  # step, split, loss, metric; default: one dev row at step 0
    steps: int = 0
    best_step: int = 0
    resumed_from: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)  # the type's own metrics.json keys
    notes: list[str] = field(default_factory=list)  # metrics.json's notes, after the classifier's

    def __post_init__(self) -> None:
        if self.curve is None:
            self.curve = [{"step": 0, "split": "dev", "loss": self.dev_loss, "metric": self.dev_metric}]

    @classmethod
    def scored(cls, dev: Evaluation, test: Evaluation, **kw: Any) -> Outcome:
        """The outcome of a model that was not trained: its dev and test evaluations."""
        return cls(dev.metric, dev.loss, test, **kw)


@dataclass
class GenerationJob:
    """One job of a generation task as a method type's ``generate`` sees it.

    ``clf`` is the causal LM in a head-less :class:`Classifier` (what parameter modes and
    checkpoints work on; ``clf.backbone`` decodes), prepared by the type, on ``device``.
    """

    task: GenerationTask
    frames: dict[str, pd.DataFrame]  # train, dev, test (test capped at eval_cap): text_a, text_b, target
    clf: Classifier
    tokenizer: Any
    cfg: dict[str, Any]
    device: torch.device
    seed: int
    model_seed: int
    trains: bool = False  # the type trains: dev keeps its checkpoint

    def prompts(self, name: str) -> list[list[int]]:
        """The zero-shot prompt ids of the k-shot table ``name``."""
        return prompts(self.frames[name], self.task, self.tokenizer)

    def eval_prompts(self) -> dict[str, list[list[int]]]:
        """The zero-shot prompt ids of dev and test, what a type without prompts of its own decodes."""
        return {s: self.prompts(s) for s in EVAL_SPLITS}

    def targets(self, name: str) -> LMSplit:
        """The k-shot table ``name`` for teacher forcing: prompt, target, labels -100 on the prompt."""
        return lm_split(self.frames[name], self.task, self.tokenizer, name)

    def teacher_forced(self, split: LMSplit, desc: str | None = None) -> tuple[float, float]:
        """(target-token accuracy, target loss) of the model as it is on ``split``; NaN for dev when
        ``eval_dev`` is false and the model is not trained (dev chooses nothing of it)."""
        if split.name == "dev" and not self.cfg["eval_dev"] and not self.trains:
            return math.nan, math.nan
        return teacher_forced(self.clf.backbone, split, int(self.cfg["eval_batch_size"]), self.device,
                              desc or split.name)


@dataclass
class GenerationOutcome:
    """What a type found on a generation task: the prompts to decode, dev's teacher-forced scores."""

    prompts: dict[str, list[list[int]]]  # dev, test: prompt ids, the runner decodes them
    dev_token_acc: float  # of the kept model (the best dev step of a trainer)
    dev_loss: float
    curve: list[dict[str, Any]] | None = None  # default: one dev row at step 0
    steps: int = 0
    best_step: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.curve is None:
            self.curve = [{"step": 0, "split": "dev", "loss": self.dev_loss, "metric": self.dev_token_acc}]


def freeze(clf: Classifier, info: Mapping[str, Any]) -> None:
    """Nothing trains: every parameter frozen (the default ``prepare``)."""
    for p in clf.parameters():
        p.requires_grad_(False)


@dataclass(frozen=True)
class MethodType:
    """A method type (see the module doc); register it with :func:`lmft.finetune.methods.register`."""

    name: str
    settings: Settings
    run: Callable[[Job], Outcome]
    trains: bool = False
    prepare: Callable[[Classifier, Mapping[str, Any]], None] = freeze
    heads: tuple[str, ...] = HEADS  # the classifier heads it can run with
    tuned: str = "none"  # metrics.json's ``mode`` when it does not train: what it fits (``linear``: a probe)
    # Rules across keys that a schema cannot say: (entry as given, settings resolved, method name) -> settings.
    resolve: Callable[[Mapping[str, Any], dict[str, Any], str], dict[str, Any]] | None = None
    generate: Callable[[GenerationJob], GenerationOutcome] | None = None  # on generation tasks; None: not there

    def __post_init__(self) -> None:
        where = f"method type {self.name!r}"
        clash = sorted(set(self.settings) & (WORKFLOW_KEYS | {"type"}))
        if clash:
            raise LmftError(f"{where}: settings {clash} are the workflow's keys")
        undocumented = sorted(k for k, s in self.settings.items() if not {"default", "description"} <= set(s))
        if undocumented:
            raise LmftError(f"{where}: settings {undocumented} need a default and a description")
        if self.trains and not set(SELECT) <= set(self.settings):
            raise LmftError(f"{where}: a type that trains takes the mode keys (lmft.finetune.methods.settings.SELECT)")
        bad_heads = sorted(set(self.heads) - set(HEADS))
        if bad_heads:
            raise LmftError(f"{where}: unknown head(s) {bad_heads}; heads are {', '.join(HEADS)}")
        jsonschema.Draft202012Validator.check_schema(self.schema)

    @property
    def schema(self) -> dict[str, Any]:
        """JSON schema of an entry's own settings (the workflow's keys apart); grid keys also take lists."""
        props: dict[str, Any] = {"type": {"const": self.name}}
        for key, schema in self.settings.items():
            listed = {"type": "array", "minItems": 1, "uniqueItems": True, "items": schema}
            props[key] = {"anyOf": [schema, listed]} if key in GRID_KEYS else schema
        return {"type": "object", "properties": props}

    def defaults(self) -> dict[str, Any]:
        """Every setting's default (fresh copies: lists may be changed)."""
        return {key: copy.deepcopy(schema["default"]) for key, schema in self.settings.items()}
