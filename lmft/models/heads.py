"""Classification heads on a pre-trained backbone: the shared ``Classifier`` interface.

Three heads, chosen by name:

``prompt`` (LM-BFF)
    logits = MLM scores of the label words at the mask position. A checkpoint without an MLM
    head (the embedded MiniLM) scores them with a decoder tied to the word embeddings, the plain
    dot product ``h_mask . E[word]`` with no bias: BERT's transform layer (dense + LayerNorm)
    would be random there and only add noise. ``notes`` then says
    ``"no MLM head in checkpoint: decoder tied to word embeddings"``.
``cls``
    a new linear layer ``hidden -> C`` on a pooled sentence vector; ``pooling`` is ``cls`` (token
    0, [CLS]), ``mean`` (the mean over the non-padding tokens) or ``last`` (the last non-padding
    token). By default the pooling the model was trained with (the manifest's ``pooling``:
    mean for MiniLM, cls for other encoders, last for causal LMs). Initialised from a seeded
    generator (normal(0, initializer_range), bias 0) or from a logistic regression on frozen
    features (:func:`fit_linear_head`).
``causal``
    the label word scored as the next token after the prompt: the LM logits at ``mask_pos``
    (the last prompt token) restricted to the label-word ids.

Only the hidden state at one position reaches the (MLM or LM) head, so no ``[B, L, vocab]``
tensor is ever made; :meth:`Classifier.vocab_logits` gives the full ``[B, vocab]`` row there
(the ``lm`` training loss of :func:`lmft.models.losses.classifier_loss`). Which template the caller
tokenises with follows :attr:`Classifier.causal`: ``task.causal_template`` with
``encode(causal=True)`` when it is True, else ``task.template``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lmft.data.tasks import Task
from lmft.data.templates import label_word_ids
from lmft.io import LmftError
from lmft.models.load import NO_MLM_HEAD_NOTE, POOLINGS, load, read_manifest

HEADS = ("prompt", "cls", "causal")


class Classifier(nn.Module):
    """A backbone plus a head mapping a batch to class logits ``[B, C]``.

    Attributes: ``backbone`` (the transformers model), ``head`` (``prompt``/``cls``/``causal``),
    ``causal`` (True for a causal-LM backbone: tokenise with ``task.causal_template`` and
    ``encode(causal=True)``), ``notes`` (facts to log and put into metrics.json), ``num_labels``,
    ``linear`` (the ``cls`` head's ``nn.Linear``, else None), ``label_ids`` (buffer of the
    label-word token ids for ``prompt``/``causal``, else empty), ``lm_head`` (the backbone's MLM/LM
    head module, None for a tied decoder or ``cls``), ``pooling`` (the ``cls`` head's, one of
    :data:`POOLINGS`; None for the heads that read ``mask_pos``) and ``prefix`` (a :class:`Prefix`
    once ``select_trainable(clf, "prefix:P")`` added one). :meth:`features` gives the hidden state
    ``[B, H]`` the head reads, e.g. for a linear probe.
    """

    def __init__(self, backbone: nn.Module, head: str, num_labels: int, causal: bool,
                 label_ids: list[int] | None = None, linear: nn.Linear | None = None,
                 notes: list[str] | None = None, pooling: str | None = None) -> None:
        super().__init__()
        if head == "cls" and pooling not in POOLINGS:
            raise LmftError(f"the cls head needs a pooling, one of {', '.join(POOLINGS)}; got {pooling!r}")
        if head != "cls" and pooling is not None:
            raise LmftError(f"pooling {pooling!r} is a setting of the cls head; the {head} head reads mask_pos")
        self.backbone = backbone
        self.head = head
        self.pooling = pooling
        self.causal = causal
        self.num_labels = num_labels
        self.notes = list(notes or [])
        self.linear = linear
        self.prefix: Prefix | None = None  # set by lmft.models.params.select_trainable("prefix:P")
        self.register_buffer("label_ids", torch.tensor(label_ids or [], dtype=torch.long), persistent=False)
        self.use_token_types = (getattr(backbone.config, "type_vocab_size", 0) or 0) > 1
        # The module that maps hidden states to vocabulary logits, when the backbone has exactly one;
        # None means the decoder tied to the word embeddings (an encoder checkpoint, prompt head).
        # Only a name, not a second registered reference: that would list the head's tensors twice.
        self.lm_head_name: str | None = None
        if backbone is not backbone.base_model:
            extra = [n for n, m in backbone.named_children() if m is not backbone.base_model]
            if len(extra) != 1:
                raise LmftError(f"{type(backbone).__name__}: expected one LM head module beside the base model, "
                                f"found {extra}")
            self.lm_head_name = extra[0]

    @property
    def lm_head(self) -> nn.Module | None:
        """The backbone's module from hidden states to vocabulary logits (BERT's ``cls``, ``lm_head``), if any."""
        return None if self.lm_head_name is None else getattr(self.backbone, self.lm_head_name)

    @property
    def feature_name(self) -> str:
        """What :meth:`features` reads, in words (for notes)."""
        if self.pooling is not None:
            return {"cls": "first token's ([CLS])", "mean": "mean-pooled", "last": "last token's"}[self.pooling]
        return "last prompt token's" if self.causal else "mask position's"

    def features(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None,
                 mask_pos: Tensor | None = None) -> Tensor:
        """Hidden states ``[B, H]`` that the head reads: the ``cls`` head's pooling, else the state at ``mask_pos``.

        ``input_ids``/``attention_mask``/``token_type_ids`` are ``[B, L]``; a prefix's positions
        are attended to but have no hidden state here, so pooling covers the input tokens only.
        """
        kwargs: dict[str, Any] = {"input_ids": input_ids}
        tokens = attention_mask  # [B, L]: the input's own tokens, what pooling averages over
        if self.prefix is not None:  # every prefix position is attended to
            kwargs["past_key_values"] = self.prefix.cache(input_ids.shape[0], self.backbone.config)
            attention_mask = torch.cat([attention_mask.new_ones(input_ids.shape[0], self.prefix.length),
                                        attention_mask], dim=1)
        if not self.causal:
            # An additive [B, 1, 1, L] mask, which transformers uses as given: building it from the 2D
            # mask itself branches on the data (mask.all()), which torch.func.vmap cannot trace.
            dtype = self.backbone.get_input_embeddings().weight.dtype
            attention_mask = (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min
        kwargs["attention_mask"] = attention_mask
        if self.use_token_types and token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        hidden = self.backbone.base_model(**kwargs).last_hidden_state  # [B, L, H]
        if self.pooling == "cls":
            return hidden[:, 0]
        if self.pooling == "mean":
            m = tokens.to(hidden.dtype).unsqueeze(-1)  # [B, L, 1]
            return (hidden * m).sum(1) / m.sum(1)
        if self.pooling == "last":
            # the last attended position (argmax finds the first 1 of the reversed mask: any padding side)
            mask_pos = tokens.shape[1] - 1 - tokens.flip(1).argmax(1)
        elif mask_pos is None:
            raise LmftError(f"the {self.head} head needs mask_pos (the position that scores the label words)")
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), mask_pos]

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None,
                mask_pos: Tensor | None = None) -> Tensor:
        """Class logits ``[B, C]`` from ``input_ids``/``attention_mask``/``token_type_ids`` ``[B, L]``, ``mask_pos`` ``[B]``."""
        h = self.features(input_ids, attention_mask, token_type_ids, mask_pos)  # [B, H]
        if self.linear is not None:
            return self.linear(h)
        if self.lm_head is None:  # tied decoder: h . E[word]
            return h @ self.backbone.get_input_embeddings().weight[self.label_ids].T
        return self.lm_head(h)[:, self.label_ids]

    def vocab_head(self) -> nn.Module:
        """The backbone's MLM/LM head that scores the label words; :class:`LmftError` where there is none
        (a ``cls`` head, a linear probe on top, the tied decoder of an MLM-less encoder)."""
        if self.linear is None and self.lm_head is not None:
            return self.lm_head
        why = ("its scores come from a linear layer" if self.linear is not None
               else f"{NO_MLM_HEAD_NOTE}, not a trained LM head")
        raise LmftError(f"the full-vocabulary (lm) loss needs the backbone's own MLM or LM head; this "
                        f"{self.head} head has none: {why}")

    def vocab_logits(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None,
                     mask_pos: Tensor | None = None) -> Tensor:
        """The MLM/LM head's logits ``[B, vocab]`` over the whole vocabulary at ``mask_pos`` ``[B]``.

        Only where :meth:`vocab_head` has a head: a prompt head with a real MLM head, or a causal head.
        """
        head = self.vocab_head()
        return head(self.features(input_ids, attention_mask, token_type_ids, mask_pos))

    def head_parameter_names(self) -> list[str]:
        """Names (as in ``named_parameters``) of the head's own parameters: the linear layer, or the
        LM/MLM head's parameters that are not shared with the base model (a tied decoder weight is not)."""
        base = {id(p) for p in self.backbone.base_model.parameters()}
        lm = {id(p) for p in self.lm_head.parameters()} if self.lm_head is not None else set()
        return [name for name, p in self.named_parameters()
                if name.startswith("linear.") or (id(p) in lm and id(p) not in base)]


class Prefix(nn.Module):
    """Prefix tuning (Li & Liang 2021): ``P`` trainable keys and values in front of every attention layer.

    ``key``/``value`` are ``[layers, kv_heads, P, head_dim]``. They reach the backbone as a fresh
    ``DynamicCache`` in every forward, so the input tokens attend to them as to P earlier tokens
    (positions shift by P, as when the prefix were real text). :meth:`from_activations` starts
    them at the keys and values of P random vocabulary tokens, as MeZO's prefix initialisation
    does ("init by real activations").
    """

    def __init__(self, key: Tensor, value: Tensor) -> None:
        super().__init__()
        self.key = nn.Parameter(key)
        self.value = nn.Parameter(value)

    @property
    def length(self) -> int:
        return self.key.shape[2]

    @classmethod
    def from_activations(cls, backbone: nn.Module, length: int, generator: torch.Generator | None = None) -> Prefix:
        """Keys and values of ``length`` random tokens (drawn with ``generator``, else torch's global RNG)."""
        from transformers import DynamicCache

        ids = torch.randint(0, backbone.config.vocab_size, (1, length), generator=generator).to(backbone.device)
        cache = DynamicCache(config=backbone.config)
        with torch.no_grad():  # attention layers write their keys/values into the cache they are given
            backbone.base_model(input_ids=ids, attention_mask=torch.ones_like(ids), past_key_values=cache)
        if cache.get_seq_length() != length:
            raise LmftError(f"{type(backbone).__name__}: its attention does not take past key/values; "
                            "prefix tuning needs them")
        return cls(torch.stack([layer.keys[0] for layer in cache.layers]),
                   torch.stack([layer.values[0] for layer in cache.layers]))

    def cache(self, batch_size: int, config: Any):
        """A fresh cache holding the prefix for a batch (attention layers append the batch's own keys)."""
        from transformers import DynamicCache

        pairs = [(k.expand(batch_size, -1, -1, -1), v.expand(batch_size, -1, -1, -1))
                 for k, v in zip(self.key, self.value)]
        return DynamicCache(ddp_cache_data=pairs, config=config)


def build_classifier(model_json: Path | str, task: Task, head: str, seed: int = 0,
                     pooling: str | None = None) -> tuple[Classifier, Any]:
    """Load the prepared model of ``model_json`` and put the ``head`` for ``task`` on it.

    ``head`` is ``prompt`` (masked LMs and MLM-less encoders), ``cls`` (any) or ``causal``
    (causal LMs). ``seed`` initialises the linear head of ``cls``; torch's global RNG is left as it was.
    ``pooling`` (``cls`` head only) overrides the pooling the model was trained with (the
    manifest's). Returns ``(classifier in eval mode, tokenizer)``.
    """
    if head not in HEADS:
        raise LmftError(f"unknown head {head!r}; one of {', '.join(HEADS)}")
    kind = read_manifest(model_json)["kind"]
    causal = kind == "causal"
    if head == "prompt" and causal:
        raise LmftError(f"{model_json}: the prompt head needs a masked LM, this model is causal; use head 'causal'")
    if head == "causal" and not causal:
        raise LmftError(f"{model_json}: the causal head needs a causal LM, this model is {kind}; use head 'prompt'")
    with torch.random.fork_rng(devices=[]):  # loading and nn.Linear draw from the RNG; keep the caller's stream
        tokenizer, backbone, manifest = load(model_json, lm_head=head != "cls")
        linear = nn.Linear(backbone.config.hidden_size, task.num_labels) if head == "cls" else None
    notes = [f"model {manifest['source']} ({manifest['model_type']}, {manifest['kind']}), head {head}"]
    notes += [n for n in manifest.get("notes", []) if not n.startswith(NO_MLM_HEAD_NOTE)]
    if linear is not None:
        gen = torch.Generator().manual_seed(seed)
        std = getattr(backbone.config, "initializer_range", 0.02)
        with torch.no_grad():
            linear.weight.copy_(torch.randn(linear.weight.shape, generator=gen) * std)
            linear.bias.zero_()
        trained = manifest["pooling"]
        pooling = pooling or trained
        notes.append(f"cls head: {pooling} pooling" + (" (as the model was trained)" if pooling == trained
                                                       else f" (the model was trained with {trained} pooling)"))
        clf = Classifier(backbone, head, task.num_labels, causal, linear=linear, notes=notes, pooling=pooling)
    else:
        ids = label_word_ids(tokenizer, list(task.label_words))
        if head == "prompt" and kind == "encoder":
            notes.append(NO_MLM_HEAD_NOTE)
        clf = Classifier(backbone, head, task.num_labels, causal, label_ids=ids, notes=notes, pooling=pooling)
    return clf.eval(), tokenizer


def fit_linear_head(clf: Classifier, features: Tensor, labels: Tensor, l2: float = 1.0, max_iter: int = 1000) -> None:
    """Set the ``cls`` head to the multinomial logistic regression fit on frozen ``features`` ``[N, H]``.

    ``labels`` ``[N]`` are class indices; ``l2`` is the inverse of sklearn's ``C`` (the strength
    of the L2 penalty). Classes missing from ``labels`` keep weight 0 and a very low bias. With
    two classes the binary solution ``w`` becomes rows ``-w/2, +w/2`` (the same probabilities).
    """
    if clf.linear is None:
        raise LmftError(f"fit_linear_head needs the cls head, this classifier has head {clf.head!r}")
    from sklearn.linear_model import LogisticRegression

    x = features.detach().double().cpu().numpy()
    y = labels.detach().cpu().numpy()
    if x.ndim != 2 or x.shape[0] != y.shape[0] or x.shape[1] != clf.linear.in_features:
        raise LmftError(f"fit_linear_head: features {tuple(features.shape)} and labels {tuple(labels.shape)} do not fit "
                        f"a head of {clf.linear.in_features} inputs")
    present = sorted(set(y.tolist()))
    weight = torch.zeros(clf.num_labels, x.shape[1], dtype=torch.float64)
    bias = torch.full((clf.num_labels,), -1e4, dtype=torch.float64)
    if len(present) == 1:
        bias[present[0]] = 0.0
    else:
        lr = LogisticRegression(C=1.0 / l2, max_iter=max_iter).fit(x, y)
        coef, icpt = torch.from_numpy(lr.coef_), torch.from_numpy(lr.intercept_)
        if len(present) == 2:
            coef, icpt = torch.cat([-coef / 2, coef / 2]), torch.cat([-icpt / 2, icpt / 2])
        weight[present], bias[present] = coef, icpt
    with torch.no_grad():
        clf.linear.weight.copy_(weight)
        clf.linear.bias.copy_(bias)
