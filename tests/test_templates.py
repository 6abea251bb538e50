"""LM-BFF templates: parsing, rendering, tokenisation and truncation."""

import pytest
from transformers import BertTokenizer

from lmft.data.tasks import NLI, SENTIMENT, get_task
from lmft.data.templates import causal_prefix, encode, label_word_ids, parse, render
from lmft.io import LmftError

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "it", "was", "a", "fine", "film", "great", "terrible",
         "the", "cat", "sat", "is", "sitting", "yes", "no", "maybe", "?", ",", ".", "lovely", "movie", "gr", "##eat", "##s"]


@pytest.fixture(scope="module")
def tok():
    return BertTokenizer(vocab={w: i for i, w in enumerate(WORDS)}, do_lower_case=True)


def test_render_single_sentence_as_lmbff():
    assert render(SENTIMENT, ["A fine film", None]) == "[CLS]A fine film It was[MASK].[SEP]"


def test_render_pair_as_lmbff():
    # sent-_0 drops the premise's final character, +sentl_1 adds a space and lower-cases the hypothesis.
    out = render(NLI, ["The cat sat.", "A cat is sitting."], {"mask": "<mask>", "cls": "<s>", "sep": "</s>"})
    assert out == "<s>The cat sat?<mask>, a cat is sitting.</s>"


def test_parse_rejects_bad_templates():
    with pytest.raises(LmftError, match="exactly one"):
        parse("*cls**sent_0*.*sep+*")
    with pytest.raises(LmftError, match="sentence part"):
        parse("*cls**sent_x*mask*")


def test_encode_positions_and_segments(tok):
    enc = encode(NLI, ["The cat sat.", "A cat is sitting."], tok, max_length=64)
    tokens = tok.convert_ids_to_tokens(enc.input_ids)
    assert tokens == ["[CLS]", "the", "cat", "sat", "?", "[MASK]", ",", "a", "cat", "is", "sitting", ".", "[SEP]"]
    assert tokens[enc.mask_pos] == "[MASK]"
    assert enc.token_type_ids == [0] * len(tokens)  # sep+ bumps the segment only after the last token


def test_encode_truncates_sentences_not_template(tok):
    long = " ".join(["film"] * 50)
    enc = encode(SENTIMENT, [long, None], tok, max_length=10)
    tokens = tok.convert_ids_to_tokens(enc.input_ids)
    assert len(tokens) == 10
    assert tokens[:1] == ["[CLS]"] and tokens[-4:] == ["was", "[MASK]", ".", "[SEP]"]
    assert tokens[enc.mask_pos] == "[MASK]"
    with pytest.raises(LmftError, match="max_length"):
        encode(SENTIMENT, ["film", None], tok, max_length=3)


def test_encode_causal_ends_before_mask(tok):
    enc = encode("*cls**sent_0*_It_was*mask*.*sep+*", ["A fine film", None], tok, max_length=32, causal=True)
    tokens = tok.convert_ids_to_tokens(enc.input_ids)
    assert tokens == ["a", "fine", "film", "it", "was"]  # no BOS in a BERT tokenizer, no sep
    assert enc.mask_pos == len(tokens) - 1


def test_label_word_ids(tok):
    task = get_task("sst-2")
    ids = label_word_ids(tok, list(task.label_words))
    assert tok.convert_ids_to_tokens(ids) == ["terrible", "great"]
    with pytest.raises(LmftError, match="single token"):
        label_word_ids(tok, ["films"])
    with pytest.raises(LmftError, match="not in the vocabulary"):
        label_word_ids(tok, ["zebra"])


def test_noprompt_template(tok):
    task = get_task("snli")
    assert task.noprompt_template == "*cls**sent_0**sep+**sent_1**sep+*"
    enc = encode(task.noprompt_template, ["The cat sat.", "A cat is sitting."], tok, max_length=64)
    tokens = tok.convert_ids_to_tokens(enc.input_ids)
    assert tokens[0] == "[CLS]" and enc.mask_pos == 0 and "[MASK]" not in tokens
    assert enc.token_type_ids == [0] * 6 + [1] * 6  # segment 1 starts after the first [SEP]
    causal = encode("*cls**sent_0*", ["A fine film", None], tok, max_length=16, causal=True)
    assert causal.mask_pos == len(causal.input_ids) - 1


@pytest.mark.parametrize("adds_bos", [False, True])
def test_causal_prompt_starts_as_the_tokenizer_starts_a_text(adds_bos):
    """``*cls*`` of a causal template is the BOS only where the tokenizer prepends it itself (Llama-2's <s>);
    SmolLM2-Instruct's BOS is the chat token <|im_start|>, which a plain-text prompt must not start with."""
    from tiny import make_tokenizer

    llama = make_tokenizer("llama")
    llama.add_bos_token = adds_bos
    enc = encode("*cls**sent_0*_It_was*mask*", ["a good film"], llama, 32, causal=True)
    assert causal_prefix(llama) == ([llama.bos_token_id] if adds_bos else [])
    assert llama.decode(enc.input_ids) == ("<|im_start|>" if adds_bos else "") + "a good film It was"
