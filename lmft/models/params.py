"""Which parameters of a Classifier train: full, blocks, BitFit, head only, LoRA, prefix.

:func:`select_trainable` sets ``requires_grad`` and returns the names of the trainable
parameters in ``named_parameters()`` order (the order every optimiser, kernel and checkpoint uses).

=============  ===================================================================================
mode           trainable parameters
=============  ===================================================================================
``all``        every parameter
``last:N``     the last N transformer blocks (``first:N``, ``middle:N``: the first N, the N central
               ones, starting at block ``(L - N) // 2``); not the embeddings, final norm or LM head
``bias``       every bias, LayerNorm's included (BitFit)
``norm``       every normalisation layer's weight and bias (LayerNorm, RMSNorm; LN-tuning): the
               BitFit of models without biases (Llama), ``2 L + 1`` vectors of the hidden size
``head``       the head's own parameters: the ``cls`` linear layer, or the MLM/LM head's parameters
               that are not shared with the base model (BERT's transform and bias; a decoder tied
               to the word embeddings is the embedding matrix, so it is not "head" and stays frozen).
               A head without own parameters (the tied decoder of the embedded MiniLM, the tied LM
               head of SmolLM2) is an error: nothing would train.
``lora:R``     rank-R LoRA adapters (``peft``) on the attention projections, all else frozen.
               Defaults per model type from peft's table (``query``/``value`` for BERT/RoBERTa,
               ``c_attn`` for GPT-2, ``q_proj``/``v_proj`` for Llama); ``lora_targets`` overrides.
               ``lora_alpha`` defaults to ``2 R`` (MeZO's r=8, alpha=16). A ``d_in -> d_out``
               projection gains ``R (d_in + d_out)`` parameters. The A matrices draw from torch's
               global RNG: seed it first for reproducible runs.
``prefix:P``   P trainable key/value prefix positions in every attention layer (prefix tuning,
               :class:`lmft.models.heads.Prefix`, started from the activations of P random tokens drawn
               from torch's global RNG), all else frozen; ``layers * 2 * P * kv_dim`` parameters
=============  ===================================================================================

The ``cls`` head's linear layer is new and random, so it trains in every mode. The prompt and
causal heads add no parameters. ``freeze_embeddings`` additionally freezes every ``nn.Embedding``
of the backbone (word, position and token-type embeddings; with a tied decoder that is the
decoder too); the embedding LayerNorm is not an embedding and keeps its mode's setting.
``train_only`` (regexes searched in the parameter names) keeps, of what the mode selects, only
the parameters that match one: ``["\\.encoder\\.layer\\."]`` trains a BERT/RoBERTa's transformer
blocks only, as the grafting paper's released code does (``fix_head``, ``fix_embeddings``: the MLM
head's transform and bias and the embeddings' LayerNorm stay frozen too).
"""

from __future__ import annotations

import re

from torch import nn

from lmft.io import LmftError
from lmft.models.heads import Classifier, Prefix
from lmft.models.load import transformer_blocks

MODES = ("all", "last:N", "first:N", "middle:N", "bias", "norm", "head", "lora:R", "prefix:P")
_MODE = re.compile(r"^(all|bias|norm|head|(last|first|middle|lora|prefix):(\d+))$")


def parse_mode(mode: str) -> tuple[str, int]:
    """``"last:2"`` -> ``("last", 2)``; ``"all"`` -> ``("all", 0)``. Raises on an unknown mode."""
    m = _MODE.match(mode)
    if not m:
        raise LmftError(f"unknown trainable-parameter mode {mode!r}; one of {', '.join(MODES)}")
    if m.group(2):
        n = int(m.group(3))
        if n < 1:
            raise LmftError(f"mode {mode!r}: the number must be at least 1")
        return m.group(2), n
    return mode, 0


def _block_names(clf: Classifier, which: str, n: int) -> set[str]:
    prefix, blocks = transformer_blocks(clf)
    total = len(blocks)
    if n > total:
        raise LmftError(f"mode {which}:{n}: the model has only {total} transformer blocks")
    start = {"first": 0, "last": total - n, "middle": (total - n) // 2}[which]
    chosen = tuple(f"{prefix}.{i}." for i in range(start, start + n))
    return {name for name, _ in clf.named_parameters() if name.startswith(chosen)}


def _inject_lora(clf: Classifier, rank: int, targets: list[str] | None, alpha: float | None, dropout: float) -> None:
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULT_TARGETS

    if any("lora_" in name for name, _ in clf.named_parameters()):
        raise LmftError("LoRA adapters are already in this classifier; build a fresh one to change the mode")
    model_type = clf.backbone.config.model_type
    if targets is None:
        if model_type not in DEFAULT_TARGETS:
            raise LmftError(f"no default LoRA target modules for model type {model_type!r}; set lora_targets")
        targets = list(DEFAULT_TARGETS[model_type])
    config = LoraConfig(r=rank, lora_alpha=2 * rank if alpha is None else alpha, lora_dropout=dropout,
                        target_modules=targets, fan_in_fan_out=model_type == "gpt2")  # GPT-2 uses Conv1D (in, out)
    try:
        inject_adapter_in_model(config, clf.backbone)
    except ValueError as e:
        raise LmftError(f"LoRA targets {targets} for {model_type}: {e}") from e


def _patterns(train_only: list[str]) -> list[re.Pattern[str]]:
    try:
        return [re.compile(p) for p in train_only]
    except re.error as e:
        raise LmftError(f"train_only: bad pattern ({e}); patterns are Python regexes: {list(train_only)}") from e


def select_trainable(clf: Classifier, mode: str, freeze_embeddings: bool = False,
                     lora_targets: list[str] | None = None, lora_alpha: float | None = None,
                     lora_dropout: float = 0.0, train_only: list[str] | None = None) -> list[str]:
    """Set ``requires_grad`` on ``clf``'s parameters by ``mode``; return the trainable names in order.

    ``lora:R`` and ``prefix:P`` add parameters to ``clf`` (once: a second call raises); the
    other modes may be switched freely.
    """
    kind, n = parse_mode(mode)
    if kind == "lora":
        _inject_lora(clf, n, lora_targets, lora_alpha, lora_dropout)
    if kind == "prefix":
        if clf.prefix is not None:
            raise LmftError("a prefix is already in this classifier; build a fresh one to change the mode")
        clf.prefix = Prefix.from_activations(clf.backbone, n)
    names = [name for name, _ in clf.named_parameters()]
    head = set(clf.head_parameter_names())
    linear = {name for name in names if name.startswith("linear.")}
    if kind == "all":
        chosen = set(names)
    elif kind in ("last", "first", "middle"):
        chosen = _block_names(clf, kind, n) | linear
    elif kind == "bias":
        chosen = {name for name in names if name.endswith(".bias")} | linear
    elif kind == "norm":  # by class name: LayerNorm, LlamaRMSNorm, T5LayerNorm ... own their parameters
        chosen = {f"{mod_name}.{p_name}".lstrip(".") for mod_name, mod in clf.named_modules()
                  if "Norm" in type(mod).__name__ for p_name, _ in mod.named_parameters(recurse=False)} | linear
    elif kind == "head":
        if not head:
            raise LmftError(f"mode 'head': the {clf.head} head of this model has no parameters of its own "
                            "(its decoder is the tied word-embedding matrix); choose another mode")
        chosen = head
    elif kind == "prefix":
        chosen = {"prefix.key", "prefix.value"} | linear
    else:  # lora
        chosen = {name for name in names if "lora_" in name} | linear
    if freeze_embeddings:  # by identity: a tied decoder is the same tensor as the word embeddings
        frozen = {id(p) for mod in clf.modules() if isinstance(mod, nn.Embedding) for p in mod.parameters()}
        chosen = {name for name, p in clf.named_parameters() if name in chosen and id(p) not in frozen}
    if train_only is not None:
        patterns = _patterns(train_only)
        chosen = {name for name in chosen if any(p.search(name) for p in patterns)}
    if not chosen:
        only = f" with train_only {list(train_only)}" if train_only is not None else ""
        raise LmftError(f"mode {mode!r}{only} selects no parameters of this {clf.backbone.config.model_type} model "
                        "(e.g. Llama has no biases); choose another mode")
    for name, p in clf.named_parameters():
        p.requires_grad_(name in chosen)
    return [name for name in names if name in chosen]


def count_trainable(clf: nn.Module) -> int:
    """Number of trainable scalars (each shared tensor counted once)."""
    return sum(p.numel() for p in clf.parameters() if p.requires_grad)
