"""Tiny random models of a real model's family, head and tokenizer kind, built offline.

For the proxy run of the paper grid (``make paper-proxy``): each hub model of ``config/paper.yaml``
becomes a model of the same architecture class and tokenizer class at a few thousand parameters,
saved as a ``save_pretrained`` folder (model and tokenizer) that a config names as a local source.

- ``roberta``: ``RobertaForMaskedLM`` (the MLM head, so the prompt head and MLM losses run) with a
  RoBERTa tokenizer (byte-level BPE, ``<s> <pad> </s> <unk> <mask>`` at RoBERTa's ids 0-4, 514
  positions as RoBERTa's).
- ``gpt2``: ``GPT2LMHeadModel`` with a GPT-2 tokenizer (byte-level BPE, ``<|endoftext|>`` alone, no
  pad or mask token; 1,024 positions as GPT-2's).

The tokenizer is trained with the ``tokenizers`` package on the texts it is given (the fabricated
sources' texts, :func:`lmft.data.fabricate.corpus`) plus every label word of the built-in tasks, each
of which must come out one token after a space (LM-BFF's rule, :func:`lmft.data.templates.label_word_ids`):
:func:`build` checks it. The weights are random (``torch.manual_seed(seed)``), so the same call
writes the same files.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable
from pathlib import Path

import torch

from lmft.io import LmftError
from lmft.models.load import save_pretrained_atomic

FAMILIES = ("roberta", "gpt2")
SPECIALS = {"roberta": ["<s>", "<pad>", "</s>", "<unk>", "<mask>"], "gpt2": ["<|endoftext|>"]}
VOCAB_SIZE = 1200  # room for every label word as one token (the corpus is a few hundred distinct words)
WORD_REPEATS = 50  # copies of each label word in the training text, so that its merges come first


def label_words() -> list[str]:
    """Every label word of the built-in tasks, in registry order."""
    from lmft.data.tasks import BUILTIN

    words = [w for task in BUILTIN.values() for w in getattr(task, "label_words", ())]
    return list(dict.fromkeys(words))


def train_tokenizer(family: str, texts: Iterable[str]):
    """A ``transformers`` tokenizer of ``family``'s class, its byte-level BPE trained on ``texts``."""
    from tokenizers import AddedToken, ByteLevelBPETokenizer
    from transformers import GPT2TokenizerFast, RobertaTokenizerFast

    words = label_words()
    bpe = ByteLevelBPETokenizer()
    lines = [*texts, *(" ".join([f" {w}"] * WORD_REPEATS) for w in words)]
    bpe.train_from_iterator(lines, vocab_size=VOCAB_SIZE, min_frequency=1, special_tokens=SPECIALS[family],
                            show_progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file, merges_file = bpe.save_model(tmp)
        vocab = json.loads(Path(vocab_file).read_text(encoding="utf-8"))
        merges = [tuple(line.split(" ")) for line in Path(merges_file).read_text(encoding="utf-8").splitlines()
                  if line and not line.startswith("#version")]
    if family == "roberta":
        # RoBERTa's <mask> takes the space before it, so that "It was <mask>." is one token at the mask
        mask = AddedToken("<mask>", lstrip=True, rstrip=False, normalized=False, special=True)
        tokenizer = RobertaTokenizerFast(vocab=vocab, merges=merges, mask_token=mask)
    else:
        eot = SPECIALS["gpt2"][0]
        tokenizer = GPT2TokenizerFast(vocab=vocab, merges=merges, unk_token=eot, bos_token=eot, eos_token=eot)
    from lmft.data.templates import label_word_ids

    label_word_ids(tokenizer, words)  # raises naming the word that is not one token
    return tokenizer


def make_model(family: str, tokenizer, layers: int, hidden: int, seed: int) -> torch.nn.Module:
    """A random ``family`` model sized ``layers`` x ``hidden`` (2 heads, FFN 2 x hidden) for ``tokenizer``."""
    from transformers import GPT2Config, GPT2LMHeadModel, RobertaConfig, RobertaForMaskedLM

    torch.manual_seed(seed)
    if family == "roberta":
        config = RobertaConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                               num_attention_heads=2, intermediate_size=2 * hidden, max_position_embeddings=514,
                               type_vocab_size=1, pad_token_id=tokenizer.pad_token_id,
                               bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
        return RobertaForMaskedLM(config).eval()
    if family == "gpt2":
        config = GPT2Config(vocab_size=len(tokenizer), n_embd=hidden, n_layer=layers, n_head=2, n_inner=2 * hidden,
                            n_positions=1024, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
        return GPT2LMHeadModel(config).eval()
    raise LmftError(f"unknown tiny model family {family!r}; one of {FAMILIES}")


def build(family: str, out_dir: Path | str, texts: Iterable[str], layers: int = 2, hidden: int = 32,
          seed: int = 0) -> Path:
    """Train the tokenizer, make the model and save both as a ``save_pretrained`` folder ``out_dir``
    (written in a temporary folder, then renamed). Returns ``out_dir``."""
    tokenizer = train_tokenizer(family, texts)
    return save_pretrained_atomic(make_model(family, tokenizer, layers, hidden, seed), tokenizer, Path(out_dir))
