"""Generation prompts and targets: truncation, ICL demonstrations, -100 labels and the target loss."""

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from lmft.data.tasks import GenerationTask
from lmft.finetune.lm_targets import IGNORE, icl_prompts, lm_split, prompt_ids, prompt_text, target_loss
from lmft.io import LmftError
from tiny import make_model, make_tokenizer

TASK = GenerationTask(name="toy-summary", prompt="Article: {text_a}\nSummary:", source={}, max_length=40,
                      max_new_tokens=8)
QA = GenerationTask(name="toy-qa", prompt="{text_a}\nQuestion: {text_b}\nAnswer:", source={}, metric="qa",
                    max_length=60, max_new_tokens=4)


def frame(n: int = 4) -> pd.DataFrame:
    return pd.DataFrame({"text_a": [f"the movie {i} was great and the story was good" for i in range(n)],
                         "text_b": [None] * n, "target": [f"movie {i} good" for i in range(n)]})


@pytest.fixture(scope="module")
def llama():
    tok = make_tokenizer("llama")
    return tok, make_model("llama", tok)


def test_prompt_is_cut_from_the_input_end(llama):
    tok, _ = llama
    long = " ".join(["the story was good"] * 40)
    text = prompt_text(TASK, tok, long)
    assert len(tok(text, add_special_tokens=False)["input_ids"]) <= TASK.max_length
    body = text.removeprefix("Article: ").removesuffix("\nSummary:")
    assert text.startswith("Article: the story") and text.endswith("\nSummary:") and long.startswith(body)
    assert prompt_text(TASK, tok, "a good film") == "Article: a good film\nSummary:"  # fits: untouched
    with pytest.raises(LmftError, match="max_length 3"):
        prompt_text(TASK, tok, long, max_length=3)


def test_labels_are_ignored_on_the_prompt(llama):
    tok, _ = llama
    split = lm_split(frame(2), TASK, tok)
    for ids, labels, target in zip(split.input_ids, split.labels, ["movie 0 good", "movie 1 good"]):
        n_prompt = sum(lab == IGNORE for lab in labels)
        assert labels[:n_prompt] == [IGNORE] * n_prompt and IGNORE not in labels[n_prompt:]
        assert labels[n_prompt:] == ids[n_prompt:]
        assert tok.decode(ids[:n_prompt]).endswith("\nSummary:")
        assert tok.decode(ids[n_prompt:]) == " " + target + "\n"  # the stop string ends the target
    batch = split.batch([0, 1])
    pad = batch["attention_mask"] == 0
    assert (batch["labels"][pad] == IGNORE).all()


def test_target_loss_equals_hand_computation(llama):
    tok, model = llama
    split = lm_split(frame(3), TASK, tok)
    batch = split.batch([0, 1, 2])
    loss = target_loss(model, batch)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    terms = [-F.log_softmax(logits[b, t - 1], -1)[batch["labels"][b, t]]
             for b in range(3) for t in range(1, batch["labels"].shape[1]) if batch["labels"][b, t] != IGNORE]
    assert loss.item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-5)
    hf = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    assert loss.item() == pytest.approx(hf.item(), rel=1e-5)


def test_icl_prompts(llama):
    tok, _ = llama
    support, queries = frame(4), frame(3)
    a = icl_prompts(queries, support, TASK, tok, 2, seed=13)
    assert a == icl_prompts(queries, support, TASK, tok, 2, seed=13)
    texts = [tok.decode(p) for p in a]
    for text, query in zip(texts, queries["text_a"]):
        parts = text.split("\n\n")
        assert len(parts) == 3 and parts[-1] == f"Article: {query}\nSummary:"
        assert all(p.startswith("Article: ") and "\nSummary: movie " in p and p.endswith(" good") for p in parts[:2])
    orders = {tuple(t.split("\n\n")[:2]) for t in texts + [tok.decode(p) for p in icl_prompts(queries, support, TASK, tok, 2, 21)]}
    assert len(orders) > 1  # the seed draws the demonstrations and their order
    with pytest.raises(LmftError, match="between 1 and the 4 support examples"):
        icl_prompts(queries, support, TASK, tok, 5, seed=13)


def test_two_text_prompt(llama):
    tok, _ = llama
    ids = prompt_ids(QA, tok, prompt_text(QA, tok, "the movie was good", "what was good"))
    assert tok.decode(ids) == "the movie was good\nQuestion: what was good\nAnswer:"
