"""Greedy decoding for causal LMs: batched, left-padded, with a KV cache.

:func:`greedy_decode` maps prompts (token id lists) to their greedy continuations (token id
lists); :func:`generate_texts` adds the tokenizer: stop strings and decoded text. Both take any
``transformers`` causal LM with an LM head (Llama, GPT-2, ...), with or without peft LoRA layers,
and give the same tokens as ``model.generate(do_sample=False)`` on the same batch.

How a batch runs: prompts are left-padded to ``[B, L]`` so that every row's next token sits in
the last column; ``position_ids`` count only real tokens, so a padded row sees the positions it
would see alone. One forward pass over the prompts fills the cache (prefill), then each step
feeds one token per row ``[B, 1]`` with the cache and the attention mask grown by one column.
A row is done at an EOS id, when the caller's ``stop`` test says so, or after ``max_new_tokens``;
the batch ends when every row is done. Prompts are sorted by length into batches (less padding)
and results come back in the input order.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from lmft.io import LmftError
from lmft.models.batching import pad_id as tokenizer_pad_id
from lmft.models.evaluate import progress_disabled


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """``input_ids`` and ``attention_mask`` (LongTensor ``[B, L]``, L the longest prompt), padded on the left."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p):] = 1
    return ids, mask


def positions(attention_mask: Tensor) -> Tensor:
    """Position ids ``[B, L]`` of a left-padded mask ``[B, L]``: 0 at each row's first real token.

    Padding slots get 0; the mask hides them, so their value does not matter.
    """
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def _forward_names(model: nn.Module) -> tuple[str, bool]:
    """(name of the cache keyword, whether ``logits_to_keep`` is taken) of the model's forward.

    transformers 5 renamed ``past_key_values`` to ``cache`` in a minor release; a peft wrapper
    passes keywords through to the model it wraps, so that model's signature is the one to read.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = inspect.signature(base.forward).parameters
    return ("cache" if "cache" in params else "past_key_values"), "logits_to_keep" in params


@torch.no_grad()
def _decode_batch(model: nn.Module, prompts: list[list[int]], max_new_tokens: int, pad_id: int,
                  eos_ids: Sequence[int], stop: Callable[[list[int]], bool] | None,
                  device: torch.device) -> list[list[int]]:
    """Greedy continuations of one batch of prompts, in the given order (see :func:`greedy_decode`)."""
    from transformers import DynamicCache

    cache_name, keeps_logits = _forward_names(model)
    ids, mask = (t.to(device) for t in left_pad(prompts, pad_id))
    pos = positions(mask)
    eos = torch.tensor(sorted(set(eos_ids)), dtype=torch.long, device=device)
    extra: dict[str, Any] = {cache_name: DynamicCache(config=model.config), "use_cache": True}
    if keeps_logits:
        extra["logits_to_keep"] = 1  # the prefill needs the last column only, not [B, L, vocab]
    out: list[list[int]] = [[] for _ in prompts]
    live = list(range(len(prompts)))
    for step in range(max_new_tokens):
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, **extra).logits[:, -1]  # [B, V]
        nxt = logits.argmax(-1)  # [B]
        hit_eos = torch.isin(nxt, eos).tolist()
        tokens = nxt.tolist()
        still = []
        for i in live:
            if hit_eos[i]:
                continue
            out[i].append(tokens[i])
            if stop is None or not stop(out[i]):
                still.append(i)
        live = still
        if not live or step == max_new_tokens - 1:
            break
        # Done rows keep stepping (their tokens are dropped): the cache stays one batch.
        ids = nxt[:, None]
        mask = torch.cat([mask, mask.new_ones((len(prompts), 1))], dim=1)
        pos = pos[:, -1:] + 1
    return out


def greedy_decode(model: nn.Module, prompts: list[list[int]], *, max_new_tokens: int, pad_id: int,
                  eos_ids: Sequence[int] = (), stop: Callable[[list[int]], bool] | None = None,
                  batch_size: int = 8, device: torch.device | str | None = None,
                  desc: str = "decode") -> list[list[int]]:
    """Greedy (argmax) continuations of ``prompts`` by a causal LM, with a KV cache.

    ``prompts`` are token id lists (N of them, any lengths >= 1); the result is one id list per
    prompt, in the same order: the generated tokens only, the prompt and the EOS token excluded,
    at most ``max_new_tokens`` long. A row stops at the first token in ``eos_ids`` (not kept), or
    after the token at which ``stop(generated_ids)`` first returns True (kept: the caller cuts).
    ``pad_id`` fills the left padding (any id: the mask hides it). Prompts go in batches of
    ``batch_size`` sorted by length; inputs go to ``device`` (default: where the model's
    parameters are). The model runs in eval mode without gradients and gets its training flag back.
    """
    if max_new_tokens < 1 or batch_size < 1:
        raise LmftError(f"greedy decoding needs max_new_tokens and batch_size >= 1, got {max_new_tokens} "
                        f"and {batch_size}")
    empty = [i for i, p in enumerate(prompts) if len(p) == 0]
    if empty:
        raise LmftError(f"prompts {empty[:5]} are empty: a causal LM needs at least one token to continue")
    limit = getattr(model.config, "max_position_embeddings", None)
    longest = max((len(p) for p in prompts), default=0)
    if limit is not None and longest + max_new_tokens > limit:
        raise LmftError(f"a {longest}-token prompt plus max_new_tokens {max_new_tokens} exceeds the model's "
                        f"{limit} positions; shorten the prompts or generate fewer tokens")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[list[int]] = [[] for _ in prompts]
    was_training = model.training
    model.eval()
    try:
        starts = range(0, len(order), batch_size)
        for s in tqdm(starts, desc=desc, leave=False, disable=progress_disabled()):
            rows = order[s:s + batch_size]
            gen = _decode_batch(model, [prompts[r] for r in rows], max_new_tokens, pad_id, eos_ids, stop, device)
            for r, g in zip(rows, gen):
                out[r] = g
    finally:
        model.train(was_training)
    return out


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` up to (not including) the earliest occurrence of any of the ``stop`` strings."""
    cuts = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return text[:min(cuts)] if cuts else text


def generate_texts(model: nn.Module, tokenizer: Any, prompts: list[list[int]], *, max_new_tokens: int,
                   stop: Sequence[str] = (), eos_ids: Sequence[int] | None = None, batch_size: int = 8,
                   device: torch.device | str | None = None, desc: str = "decode") -> list[str]:
    """Greedy continuations of ``prompts`` (N token id lists) as text, one string per prompt in order.

    The text is the decoded generated part (special tokens skipped) without leading whitespace,
    cut before the first occurrence of any ``stop`` string (e.g. ``"\\n"``) after it: a model may
    open its answer with a line break, which is not yet its end. A row stops generating as soon as its text
    holds one, so a batch ends once every row has a stop string or an EOS. ``eos_ids`` defaults to
    the tokenizer's EOS token; padding uses :func:`lmft.models.batching.pad_id`. The rest is
    :func:`greedy_decode`.
    """
    if eos_ids is None:
        eos_ids = () if tokenizer.eos_token_id is None else (tokenizer.eos_token_id,)
    stop = [s for s in stop if s]

    def text(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=True).lstrip()

    def stopped(ids: list[int]) -> bool:  # decodes the whole continuation: a stop string may span tokens
        return any(s in text(ids) for s in stop)

    gen = greedy_decode(model, prompts, max_new_tokens=max_new_tokens, pad_id=tokenizer_pad_id(tokenizer),
                        eos_ids=eos_ids, stop=stopped if stop else None, batch_size=batch_size, device=device,
                        desc=desc)
    return [cut_at_stop(text(g), stop) for g in gen]
