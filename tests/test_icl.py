"""lmft.finetune.demos: demonstration templates, sampling, prompt construction and the truncation rule."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lmft.data.tasks import get_task
from lmft.data.templates import encode
from lmft.finetune.demos import build_prompt, demo_parts, icl_encode, prompt_template, sample_demos
from lmft.io import LmftError
from tiny import make_tokenizer, tiny_frame

SST2, SNLI = get_task("sst-2"), get_task("snli")
DEMOS = [(["so bad"], "terrible"), (["fun movie"], "great")]


@pytest.fixture(scope="module")
def bert():
    return make_tokenizer("bert")


@pytest.fixture(scope="module")
def llama():
    return make_tokenizer("llama")


def test_masked_lm_template_is_lmbff_format() -> None:
    assert prompt_template(SST2.template, ["great", "terrible"], causal=False) == (
        "*cls**sent_0*_It_was*mask*.*sep+**sent_1*_It_was*_great*.*sep*sent_2*_It_was*_terrible*.*sep*")
    assert prompt_template(SNLI.template, ["Yes"], causal=False) == (
        "*cls**sent-_0*?*mask*,*+sentl_1**sep+**sent-_2*?*_Yes*,*+sentl_3*sep*")
    assert prompt_template(SST2.template, [], causal=False) == SST2.template


def test_causal_template_puts_demos_first_one_per_line() -> None:
    assert prompt_template(SST2.causal_template, ["great", "terrible"], causal=True) == (
        "*cls*sent_1*_It_was*_great*\n*sent_2*_It_was*_terrible*\n*sent_0*_It_was*mask*")
    assert demo_parts("*cls**sent_0*_It_was*mask*.*sep+*", "great", 3, causal=True) == ["sent_3", "_It_was", "_great"]


def test_masked_prompt_tokens_and_segments(bert) -> None:
    p = build_prompt(SST2.template, ["a good film"], DEMOS, bert, 100, causal=False)
    tokens = bert.convert_ids_to_tokens(p.encoded.input_ids)
    assert tokens == ["[CLS]", "a", "good", "film", "it", "was", "[MASK]", ".", "[SEP]",
                      "so", "bad", "it", "was", "terrible", ".", "[SEP]", "fun", "movie", "it", "was", "great", ".",
                      "[SEP]"]
    assert p.encoded.mask_pos == 6 and p.n_demos == 2
    assert p.encoded.token_type_ids == [0] * 9 + [1] * 14  # query segment 0, demonstrations segment 1


def test_causal_prompt_ends_with_the_query(llama) -> None:
    p = build_prompt(SST2.causal_template, ["a good film"], DEMOS, llama, 100, causal=True)
    # plain text: the chat-control BOS that the tokenizer does not add itself stays out
    assert llama.decode(p.encoded.input_ids) == "so bad It was terrible\nfun movie It was great\na good film It was"
    assert p.encoded.mask_pos == len(p.encoded.input_ids) - 1


def test_truncation_drops_last_demos_then_cuts_the_query(bert) -> None:
    full = build_prompt(SST2.template, ["a good film"], DEMOS, bert, 100, causal=False)
    n = len(full.encoded.input_ids)  # 23: query 9, each demonstration 7
    one = build_prompt(SST2.template, ["a good film"], DEMOS, bert, n - 1, causal=False)
    assert one.n_demos == 1 and one.n_sampled == 2
    assert bert.convert_ids_to_tokens(one.encoded.input_ids)[9:] == ["so", "bad", "it", "was", "terrible", ".", "[SEP]"]
    none = build_prompt(SST2.template, ["a good film"], DEMOS, bert, 15, causal=False)
    assert none.n_demos == 0 and len(none.encoded.input_ids) == 9
    cut = build_prompt(SST2.template, ["a good film"], DEMOS, bert, 7, causal=False)
    assert bert.convert_ids_to_tokens(cut.encoded.input_ids) == ["[CLS]", "a", "it", "was", "[MASK]", ".", "[SEP]"]
    alone = encode(SST2.template, ["a good film"], bert, 7)
    assert cut.encoded == alone


def test_sampling_one_per_label_in_label_order_or_shuffled() -> None:
    labels = [0, 1, 0, 1, 2, 2, 0]
    rows = sample_demos(labels, 3, 1, np.random.default_rng(0), shuffle=False)
    assert [labels[r] for r in rows] == [0, 1, 2]
    rows2 = sample_demos(labels, 3, 2, np.random.default_rng(0), shuffle=False)
    assert [labels[r] for r in rows2] == [0, 0, 1, 1, 2, 2] and len(set(rows2)) == 6
    draws = {tuple(sample_demos(labels, 3, 2, np.random.default_rng(s), shuffle=True)) for s in range(20)}
    assert len({tuple(labels[r] for r in d) for d in draws}) > 1  # the label order varies
    with pytest.raises(LmftError, match="label 1 has 2 training example"):
        sample_demos(labels, 3, 3, np.random.default_rng(0), shuffle=False)


def test_icl_encode_is_seeded_per_split(bert) -> None:
    train, query = tiny_frame(), tiny_frame(4)
    labels = [int(x) for x in train.label]

    def run(seed: int, split: str, df: pd.DataFrame = query):
        return [p.encoded.input_ids for p in icl_encode(df, train, labels, SST2, bert, False, 200, 1, seed, split)]

    assert run(13, "test") == run(13, "test")
    assert run(13, "test") != run(21, "test")
    assert run(13, "test") != run(13, "dev")
    assert run(13, "test", tiny_frame(8))[:4] == run(13, "test")  # a prompt does not depend on later rows
    with pytest.raises(LmftError, match="demos_per_label must be at least 1"):
        icl_encode(query, train, labels, SST2, bert, False, 200, 0, 13, "test")


def test_label_word_that_breaks_template_syntax_is_rejected() -> None:
    with pytest.raises(LmftError, match="label word 'not_entailment'"):
        demo_parts(SST2.template, "not_entailment", 1, causal=False)
