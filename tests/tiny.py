"""Tiny random models and real tokenizers for tests: fast (well under a second), deterministic, offline.

``make_tiny_model_dir(tmp_path, arch)`` builds a 2-layer, 32-wide model of the given architecture
with a small tokenizer, saves it in ``save_pretrained`` layout, runs :func:`lmft.models.load.prepare`
on it and returns the ``model.json`` path that :func:`lmft.models.load.load` and
:func:`lmft.models.heads.build_classifier` take.

The tokenizers are real ``transformers`` tokenizers built from small vocabularies:

- ``bert``: a lower-casing WordPiece ``BertTokenizer`` (``[CLS]``/``[SEP]``/``[MASK]``); each word
  in :data:`WORDS` is one token, anything else falls back to characters (``##x`` pieces).
- ``roberta``, ``gpt2``, ``llama``: byte-level BPE (any text encodes, no unknown token); each
  word in :data:`WORDS`, lower-case or capitalised, preceded by a space (``"Ġgreat"``) is one
  token, everything else splits into bytes. ``roberta`` has ``<s>``/``</s>``/``<mask>``/``<pad>``;
  ``gpt2`` has only ``<|endoftext|>`` (no pad, no mask, as GPT-2); ``llama`` has ``<|im_start|>``
  as BOS, ``<|im_end|>`` as EOS and a ``<|pad|>`` token (as SmolLM2 has).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

WORDS: tuple[str, ...] = tuple(
    """great terrible okay good bad yes no maybe it was this is the a an of to and in that movie film
    story plot actors acting fun boring not very really so but with for as its was were be are
    subjective objective description entity expression human location number world sports business
    tech entertainment politics news article about premise hypothesis sentence answer question type
    same meaning does entail or what who where when how many contradiction entailment neutral""".split()
)
ARCHS = ("bert", "roberta", "gpt2", "llama")
HIDDEN, LAYERS, HEADS, FFN, POSITIONS = 32, 2, 2, 64, 300  # positions > the longest task max_length (256)

# Short labelled sentences for tiny k-shot tables: (text, sentiment label "0" negative / "1" positive).
SENTENCES: tuple[tuple[str, str], ...] = (
    ("a great movie with fun actors", "1"),
    ("the story was good and the acting was great", "1"),
    ("really fun, not boring", "1"),
    ("a very good film", "1"),
    ("so great", "1"),
    ("the plot is good", "1"),
    ("a terrible movie", "0"),
    ("the acting was bad and the story was boring", "0"),
    ("very bad, not fun", "0"),
    ("a boring film with terrible actors", "0"),
    ("so bad", "0"),
    ("the plot is terrible", "0"),
)


def _byte_chars() -> list[str]:
    """The 256 printable stand-ins of byte-level BPE (byte b -> a visible unicode character)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    out, shift = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + shift)
            shift += 1
    return [out[b] for b in range(256)]


def _bpe_vocab(specials: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-level vocab plus merges that build each space-prefixed word left to right.

    Every merge has a ``Ġ``-prefixed left side, so inside a word only the growing prefix can
    merge: a listed word always ends as one token, whatever the merge order.
    """
    space = _byte_chars()[ord(" ")]
    tokens = list(specials) + _byte_chars()
    merges: list[tuple[str, str]] = []
    seen = set(tokens)
    for word in WORDS:
        for form in dict.fromkeys((word, word.capitalize())):
            piece = space
            for ch in form:
                merged = piece + ch
                if merged not in seen:
                    merges.append((piece, ch))
                    tokens.append(merged)
                    seen.add(merged)
                piece = merged
    return {t: i for i, t in enumerate(tokens)}, merges


def make_tokenizer(arch: str):
    """A small real tokenizer for ``arch`` (see the module docstring)."""
    from transformers import BertTokenizer, GPT2Tokenizer, RobertaTokenizer

    if arch == "bert":
        chars = list("abcdefghijklmnopqrstuvwxyz0123456789.,?!:;'\"-()")
        tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *("##" + c for c in chars), *WORDS]
        return BertTokenizer(vocab={t: i for i, t in enumerate(dict.fromkeys(tokens))})
    if arch == "roberta":
        vocab, merges = _bpe_vocab(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
        return RobertaTokenizer(vocab=vocab, merges=merges)
    if arch == "gpt2":
        vocab, merges = _bpe_vocab(["<|endoftext|>"])
        return GPT2Tokenizer(vocab=vocab, merges=merges, unk_token="<|endoftext|>", bos_token="<|endoftext|>",
                             eos_token="<|endoftext|>")
    if arch == "llama":
        vocab, merges = _bpe_vocab(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"])
        return GPT2Tokenizer(vocab=vocab, merges=merges, unk_token="<|endoftext|>", bos_token="<|im_start|>",
                             eos_token="<|im_end|>", pad_token="<|pad|>")
    raise ValueError(f"unknown tiny arch {arch!r}; one of {ARCHS}")


def make_config(arch: str, tokenizer, mlm_head: bool = True, layers: int = LAYERS):
    """A ``layers``-deep (default 2), 32-wide ``transformers`` config matching ``tokenizer``."""
    from transformers import BertConfig, GPT2Config, LlamaConfig, RobertaConfig

    n = len(tokenizer)
    if arch == "bert":
        return BertConfig(vocab_size=n, hidden_size=HIDDEN, num_hidden_layers=layers, num_attention_heads=HEADS,
                          intermediate_size=FFN, max_position_embeddings=POSITIONS, type_vocab_size=2,
                          pad_token_id=tokenizer.pad_token_id,
                          architectures=["BertForMaskedLM" if mlm_head else "BertModel"])
    if arch == "roberta":
        return RobertaConfig(vocab_size=n, hidden_size=HIDDEN, num_hidden_layers=layers, num_attention_heads=HEADS,
                             intermediate_size=FFN, max_position_embeddings=POSITIONS + 2, type_vocab_size=1,
                             pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                             eos_token_id=tokenizer.eos_token_id,
                             architectures=["RobertaForMaskedLM" if mlm_head else "RobertaModel"])
    if arch == "gpt2":
        return GPT2Config(vocab_size=n, n_embd=HIDDEN, n_layer=layers, n_head=HEADS, n_inner=FFN,
                          n_positions=POSITIONS, bos_token_id=tokenizer.bos_token_id,
                          eos_token_id=tokenizer.eos_token_id, architectures=["GPT2LMHeadModel"])
    if arch == "llama":
        return LlamaConfig(vocab_size=n, hidden_size=HIDDEN, num_hidden_layers=layers, num_attention_heads=HEADS,
                           num_key_value_heads=HEADS, intermediate_size=FFN, max_position_embeddings=POSITIONS,
                           bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                           pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
                           architectures=["LlamaForCausalLM"])
    raise ValueError(f"unknown tiny arch {arch!r}; one of {ARCHS}")


def make_model(arch: str, tokenizer, mlm_head: bool = True, seed: int = 0, layers: int = LAYERS):
    """A tiny random model (float32) of ``arch``; same ``seed`` -> same weights."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM

    config = make_config(arch, tokenizer, mlm_head, layers)
    cls = AutoModelForCausalLM if arch in ("gpt2", "llama") else AutoModelForMaskedLM if mlm_head else AutoModel
    torch.manual_seed(seed)
    return cls.from_config(config).float().eval()


def save_tiny_hf_dir(root: Path, arch: str = "bert", mlm_head: bool = True, seed: int = 0,
                     layers: int = LAYERS) -> Path:
    """Save a tiny model and its tokenizer under ``root/<arch>[-nohead]-<seed>[-L<layers>]/hf``; returns that folder."""
    tokenizer = make_tokenizer(arch)
    model = make_model(arch, tokenizer, mlm_head, seed, layers)
    name = f"{arch}{'' if mlm_head else '-nohead'}-{seed}{'' if layers == LAYERS else f'-L{layers}'}"
    folder = Path(root) / name / "hf"
    from transformers.utils import logging

    logging.disable_progress_bar()  # tests run quiet
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def make_tiny_model_dir(tmp_path: Path, arch: str = "bert", mlm_head: bool = True, seed: int = 0,
                        layers: int = LAYERS) -> Path:
    """Build, save and prepare a tiny model; returns the path of its ``model.json`` manifest.

    ``arch`` is one of :data:`ARCHS`; ``mlm_head=False`` (bert, roberta) saves the bare encoder,
    as the embedded MiniLM is; ``layers`` sets the depth. Two calls with the same arguments give
    identical weights.
    """
    from lmft.models.load import prepare

    folder = save_tiny_hf_dir(tmp_path, arch, mlm_head, seed, layers)
    prepare(str(folder), folder.parent / "prepared")
    return folder.parent / "prepared" / "model.json"


def tiny_frame(n: int | None = None, pair: bool = False) -> pd.DataFrame:
    """A k-shot-style table (``text_a``[, ``text_b``], ``label`` as "0"/"1") from :data:`SENTENCES`.

    ``n`` rows (default all 12, balanced); ``pair=True`` adds a ``text_b`` column.
    """
    rows = list(SENTENCES) if n is None else [SENTENCES[i % 2 * 6 + i // 2 % 6] for i in range(n)]
    df = pd.DataFrame({"text_a": [t for t, _ in rows], "label": [lab for _, lab in rows]})
    if pair:
        df["text_b"] = ["it was " + t for t, _ in rows[::-1]]
    return df


def write_tiny_splits(root: Path) -> dict[str, Path]:
    """k-shot-style ``train``/``dev``/``test`` parquet files (12, 8 and 10 rows of :func:`tiny_frame`) under ``root``."""
    from lmft.io import write_parquet

    out = {}
    for name, df in (("train", tiny_frame()), ("dev", tiny_frame(8)), ("test", tiny_frame(10))):
        out[name] = Path(root) / f"{name}.parquet"
        write_parquet(df, out[name])
    return out


def tiny_prompt_split(root: Path, name: str = "train"):
    """A tiny BERT prompt classifier for SST-2 and :func:`tiny_frame` encoded for it: ``(model_json, clf, split)``."""
    from lmft.data.tasks import get_task
    from lmft.models.batching import encode_frame, label_ids, pad_id
    from lmft.models.evaluate import Split
    from lmft.models.heads import build_classifier

    task = get_task("sst-2")
    model_json = make_tiny_model_dir(root, "bert")
    clf, tok = build_classifier(model_json, task, "prompt")
    df = tiny_frame()
    return model_json, clf, Split(encode_frame(df, task, tok), label_ids(df, task), pad_id(tok), name)
