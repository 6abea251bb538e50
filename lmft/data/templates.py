"""LM-BFF prompt templates: parsing, rendering and tokenisation.

A template is a ``*``-separated list of parts (LM-BFF's syntax):

==============  ===============================================================
part            meaning
==============  ===============================================================
``cls``         the classifier / begin-of-sequence token
``mask``        the mask token whose label-word logits classify the example
``sep``         the separator token; ``sep+`` also bumps the segment id
``sent_i``      sentence i as it is
``+sent_i``     sentence i with a leading space
``sent-_i``     sentence i without its last character (e.g. a final period)
``sentl_i``     sentence i with its first character lower-cased (``+sentl_i``, ``sentl-_i`` combine)
``sentu_i``     sentence i with its first character upper-cased (``+sentu_i`` likewise)
anything else   literal text, ``_`` standing for a space
==============  ===============================================================

Truncation differs from LM-BFF on purpose: LM-BFF cuts the token list at ``max_length`` and
may cut off the mask; here the sentence parts are shortened from their ends, longest first,
so the template words and the mask always survive.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from lmft.io import LmftError

_SENT = re.compile(r"^(\+?)sent([lu]?)(-?)_(\d+)$")
_SPECIAL = ("cls", "mask", "sep", "sep+")


@dataclass(frozen=True)
class Part:
    """One parsed template part: ``kind`` is special, sent or text."""

    kind: str
    value: str = ""  # special name, or literal text
    sent: int = -1  # sentence index for kind == "sent"
    space: bool = False  # leading space
    case: str = ""  # "l" lower / "u" upper first character
    drop_last: bool = False


def parse(template: str, require_mask: bool = True) -> list[Part]:
    """Parse an LM-BFF template into parts; raises :class:`LmftError` on a malformed one.

    Prompt templates need exactly one ``*mask*``; no-prompt ones (``require_mask=False``) may have none.
    """
    parts: list[Part] = []
    for raw in template.split("*"):
        if raw == "":
            continue
        if raw in _SPECIAL:
            parts.append(Part("special", raw))
            continue
        m = _SENT.match(raw)
        if m:
            space, case, drop, idx = m.groups()
            parts.append(Part("sent", sent=int(idx), space=bool(space), case=case, drop_last=bool(drop)))
        elif raw.startswith(("sent", "+sent")) and "_" in raw:
            raise LmftError(f"template {template!r}: cannot parse sentence part {raw!r}")
        else:
            parts.append(Part("text", raw.replace("_", " ")))
    n_mask = sum(p.kind == "special" and p.value == "mask" for p in parts)
    if n_mask > 1 or (require_mask and n_mask == 0):
        raise LmftError(f"template {template!r}: needs exactly one *mask*")
    return parts


def sentences_used(template: str) -> set[int]:
    return {p.sent for p in parse(template) if p.kind == "sent"}


def _sentence_text(part: Part, texts: list[str | None]) -> str:
    if part.sent >= len(texts) or texts[part.sent] is None:
        raise LmftError(f"template uses sentence {part.sent} but the example has {sum(t is not None for t in texts)}")
    text = str(texts[part.sent])
    if part.drop_last:
        text = text[:-1]
    if part.case == "l":
        text = text[:1].lower() + text[1:]
    elif part.case == "u":
        text = text[:1].upper() + text[1:]
    return (" " + text) if part.space else text


def render(template: str, texts: list[str | None], special: dict[str, str] | None = None) -> str:
    """Render a template as a string (for logs, ICL prompts and tests).

    ``special`` maps ``cls``/``mask``/``sep`` to the strings to print, e.g. ``{"mask": "<mask>"}``;
    missing ones render as ``[CLS]``, ``[MASK]``, ``[SEP]``.
    """
    names = {"cls": "[CLS]", "mask": "[MASK]", "sep": "[SEP]"} | (special or {})
    out = []
    for p in parse(template):
        if p.kind == "special":
            out.append(names[p.value.rstrip("+")])
        elif p.kind == "sent":
            out.append(_sentence_text(p, texts))
        else:
            out.append(p.value)
    return "".join(out)


@dataclass
class Encoded:
    """One tokenised example.

    ``mask_pos`` is the position whose logits score the label words: the mask token for masked
    LMs, the last prompt token for causal LMs (its next-token logits).
    """

    input_ids: list[int]
    token_type_ids: list[int]
    mask_pos: int


def _text_ids(tokenizer: Any, text: str) -> list[int]:
    if len(text) == 1:  # LM-BFF: a lone character maps to its own token, never to a space-prefixed one
        tid = tokenizer.convert_tokens_to_ids(text)
        if tid is not None and tid != tokenizer.unk_token_id:
            return [tid]
    return tokenizer.encode(text, add_special_tokens=False) if text else []


def encode(
    template: str,
    texts: list[str | None],
    tokenizer: Any,
    max_length: int,
    causal: bool = False,
) -> Encoded:
    """Tokenise one example with an LM-BFF template.

    With ``causal=True`` the sequence ends right before ``*mask*`` (what follows the mask is
    dropped), ``cls`` becomes what the tokenizer itself puts before a text (:func:`causal_prefix`),
    and ``sep`` is dropped: the label word is then scored as the next token after the prompt.

    A template without ``*mask*`` (no-prompt) puts ``mask_pos`` on the first token for masked
    LMs (the [CLS] a linear head reads) and on the last token for causal LMs.
    """
    parts = parse(template, require_mask=False)
    cut = next((i for i, p in enumerate(parts) if p.kind == "special" and p.value == "mask"), None)
    if causal and cut is not None:
        parts = parts[:cut]
    pieces: list[tuple[str, list[int], int]] = []  # (kind, ids, segment)
    segment = 0
    for p in parts:
        if p.kind == "special":
            if p.value == "cls":
                if causal:
                    ids = causal_prefix(tokenizer)
                else:
                    ids = [] if tokenizer.cls_token_id is None else [tokenizer.cls_token_id]
            elif p.value == "mask":
                if tokenizer.mask_token_id is None:
                    raise LmftError(f"{type(tokenizer).__name__} has no mask token: use a masked LM or a causal head")
                ids = [tokenizer.mask_token_id]
            else:
                ids = [] if causal else [tokenizer.sep_token_id]
            pieces.append(("special:" + p.value, ids, segment))
            if p.value == "sep+":
                segment += 1
        elif p.kind == "sent":
            pieces.append(("sent", _text_ids(tokenizer, _sentence_text(p, texts)), segment))
        else:
            pieces.append(("text", _text_ids(tokenizer, p.value), segment))

    fixed = sum(len(ids) for kind, ids, _ in pieces if kind != "sent")
    budget = max_length - fixed
    if budget < 0:
        raise LmftError(f"template {template!r} alone needs {fixed} tokens, more than max_length={max_length}")
    _truncate_sentences(pieces, budget)

    input_ids: list[int] = []
    token_type_ids: list[int] = []
    mask_pos = -1
    for kind, ids, seg in pieces:
        if kind == "special:mask":
            mask_pos = len(input_ids)
        input_ids += ids
        token_type_ids += [seg] * len(ids)
    if causal:
        if not input_ids:
            raise LmftError(f"template {template!r}: empty prompt before *mask*")
        mask_pos = len(input_ids) - 1
    elif mask_pos < 0:
        mask_pos = 0
    return Encoded(input_ids, token_type_ids, mask_pos)


def causal_prefix(tokenizer: Any) -> list[int]:
    """The token ids a causal LM's tokenizer prepends to a text by itself (``[bos]`` for Llama-2, none for GPT-2).

    A prompt then starts as the model's pre-training documents did. A BOS token that the tokenizer
    does not add is often a chat-control token (SmolLM2-Instruct's is ``<|im_start|>``, which opens a
    chat turn), so it is left out.
    """
    lead = tokenizer("x", add_special_tokens=True)["input_ids"]
    bos = tokenizer.bos_token_id
    return [bos] if bos is not None and lead and lead[0] == bos else []


def _truncate_sentences(pieces: list[tuple[str, list[int], int]], budget: int) -> None:
    """Shorten sentence pieces in place, one token at a time from the longest, to fit ``budget``."""
    sent_idx = [i for i, (kind, _, _) in enumerate(pieces) if kind == "sent"]
    total = sum(len(pieces[i][1]) for i in sent_idx)
    while total > budget:
        i = max(sent_idx, key=lambda j: len(pieces[j][1]))
        kind, ids, seg = pieces[i]
        pieces[i] = (kind, ids[:-1], seg)
        total -= 1


def label_word_ids(tokenizer: Any, words: list[str]) -> list[int]:
    """Token ids of the label words, each encoded with a leading space (as LM-BFF does for RoBERTa).

    WordPiece tokenizers ignore the space; BPE ones need it. Each word must be exactly one token.
    """
    ids = []
    for w in words:
        toks = tokenizer.encode(" " + w, add_special_tokens=False)
        if len(toks) != 1:
            pieces = tokenizer.convert_ids_to_tokens(toks)
            raise LmftError(f"label word {w!r} is {len(toks)} tokens {pieces} for {type(tokenizer).__name__}; "
                            "choose a word that is a single token")
        if toks[0] == tokenizer.unk_token_id:
            raise LmftError(f"label word {w!r} is not in the vocabulary of {type(tokenizer).__name__}")
        ids.append(toks[0])
    if len(set(ids)) != len(ids):
        raise LmftError(f"label words {words} map to repeated token ids {ids}")
    return ids
