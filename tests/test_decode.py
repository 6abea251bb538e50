"""Greedy decoding (lmft.finetune.decode) against transformers' own ``generate`` on tiny random causal LMs."""

import pytest
import torch
from transformers import LlamaConfig
from transformers import AutoModelForCausalLM

from lmft.finetune.decode import cut_at_stop, generate_texts, greedy_decode, left_pad
from lmft.io import LmftError
from tiny import make_config, make_tokenizer

ARCHS = ("llama", "gpt2")
SENTENCES = ("a great movie", "the story was good and the acting was great", "so bad",
             "really fun, not boring at all", "x", "the plot is terrible", "it was okay")


def causal_lm(arch: str, seed: int = 0):
    """(tokenizer, model): a tiny random causal LM, float32, eager attention, eval mode.

    Untied output embeddings: the tied tiny model only repeats its last input token, which would
    hide a decoder that loses the context.
    """
    tok = make_tokenizer(arch)
    config = make_config(arch, tok)
    config.tie_word_embeddings = False
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").float().eval()
    return tok, model


def pad_of(tok) -> int:
    return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id


def prompts_of(tok, n: int = len(SENTENCES)) -> list[list[int]]:
    return [tok(s)["input_ids"] for s in SENTENCES[:n]]


def hf_greedy(model, prompts: list[list[int]], pad_id: int, max_new_tokens: int, eos_ids: list[int]) -> list[list[int]]:
    """``model.generate`` greedy on the same left-padded batch; each row cut before its first EOS."""
    ids, mask = left_pad(prompts, pad_id)
    out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new_tokens,
                         pad_token_id=pad_id, eos_token_id=eos_ids)[:, ids.shape[1]:].tolist()
    cut = []
    for row in out:
        ends = [j for j, t in enumerate(row) if t in eos_ids]
        cut.append(row[:ends[0]] if ends else row)
    return cut


@pytest.mark.parametrize("arch", ARCHS)
def test_single_prompt_matches_generate(arch):
    tok, model = causal_lm(arch)
    prompt = prompts_of(tok)[1:2]
    eos = [model.config.eos_token_id]
    ours = greedy_decode(model, prompt, max_new_tokens=12, pad_id=pad_of(tok), eos_ids=eos)
    assert ours == hf_greedy(model, prompt, pad_of(tok), 12, eos)
    assert len(ours[0]) == 12 and len(set(ours[0])) > 3  # a varied continuation, not one repeated token


def test_prefill_once_then_one_token_a_step():
    tok, model = causal_lm("llama")
    prompts = prompts_of(tok, 3)
    shapes = []
    hook = model.register_forward_pre_hook(lambda _m, _a, kw: shapes.append(tuple(kw["input_ids"].shape)),
                                           with_kwargs=True)
    try:
        greedy_decode(model, prompts, max_new_tokens=5, pad_id=pad_of(tok))
    finally:
        hook.remove()
    assert shapes == [(3, max(len(p) for p in prompts))] + [(3, 1)] * 4


@pytest.mark.parametrize("arch", ARCHS)
def test_left_padded_batch_matches_generate(arch):
    tok, model = causal_lm(arch)
    prompts = prompts_of(tok, 5)
    assert len({len(p) for p in prompts}) == 4  # lengths 1 to 15: rows padded by 0 to 14
    eos = [model.config.eos_token_id]
    ours = greedy_decode(model, prompts, max_new_tokens=10, pad_id=pad_of(tok), eos_ids=eos, batch_size=8)
    assert ours == hf_greedy(model, prompts, pad_of(tok), 10, eos)
    # padding changes nothing: each prompt alone gives the same tokens
    assert ours == [greedy_decode(model, [p], max_new_tokens=10, pad_id=pad_of(tok), eos_ids=eos)[0] for p in prompts]


@pytest.mark.parametrize("arch", ARCHS)
def test_input_order_whatever_the_batch_size(arch):
    tok, model = causal_lm(arch, seed=1)
    prompts = prompts_of(tok)[::-1]
    runs = [greedy_decode(model, prompts, max_new_tokens=6, pad_id=pad_of(tok), batch_size=b) for b in (1, 3, 8)]
    assert runs[0] == runs[1] == runs[2]
    assert runs[0][0] == greedy_decode(model, prompts[:1], max_new_tokens=6, pad_id=pad_of(tok))[0]


def test_max_new_tokens_respected():
    tok, model = causal_lm("gpt2")
    out = greedy_decode(model, prompts_of(tok), max_new_tokens=7, pad_id=pad_of(tok), batch_size=3)
    assert [len(o) for o in out] == [7] * len(SENTENCES)


@pytest.mark.parametrize("arch", ARCHS)
def test_eos_stops_each_row(arch):
    tok, model = causal_lm(arch)
    prompts = prompts_of(tok, 5)
    full = greedy_decode(model, prompts, max_new_tokens=10, pad_id=pad_of(tok))
    eos = full[0][3]  # a token that row 0 generates fourth: it now ends row 0 after 3 tokens
    assert eos not in full[0][:3]
    out = greedy_decode(model, prompts, max_new_tokens=10, pad_id=pad_of(tok), eos_ids=(eos, 12345))
    assert len(out[0]) == 3
    assert out == [row[:row.index(eos)] if eos in row else row for row in full]
    assert out == hf_greedy(model, prompts, pad_of(tok), 10, [eos])


def _word_stop(tok, ids: list[int]) -> tuple[str, int]:
    """A stop string from the continuation ``ids``: an alphabetic token's text, and the first index k
    at which ``decode(ids[:k + 1])`` contains it."""
    piece = next(tok.decode([t]) for t in ids[2:] if tok.decode([t]).strip().isalpha())
    k = next(k for k in range(len(ids)) if piece in tok.decode(ids[:k + 1]))
    return piece, k


def test_stop_string_cuts_text():
    tok, model = causal_lm("llama")
    prompts = prompts_of(tok, 4)
    ids = greedy_decode(model, prompts, max_new_tokens=16, pad_id=pad_of(tok), eos_ids=[tok.eos_token_id])
    full = generate_texts(model, tok, prompts, max_new_tokens=16)
    assert full == [tok.decode(row, skip_special_tokens=True).lstrip() for row in ids]
    stop, _ = _word_stop(tok, ids[0])
    cut = generate_texts(model, tok, prompts, max_new_tokens=16, stop=[stop, "@@never@@"], batch_size=2)
    assert cut == [text[:text.find(stop)] if stop in text else text for text in full]
    assert len(cut[0]) < len(full[0])


def test_stop_string_ends_decoding_early():
    tok, model = causal_lm("gpt2")
    prompt = prompts_of(tok)[1:2]
    ids = greedy_decode(model, prompt, max_new_tokens=20, pad_id=pad_of(tok))[0]
    stop, k = _word_stop(tok, ids)
    calls = []
    hook = model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        text = generate_texts(model, tok, prompt, max_new_tokens=20, stop=[stop])
    finally:
        hook.remove()
    assert len(calls) == k + 1 < 20  # the prefill gives token 0, each further pass one token
    full = tok.decode(ids).lstrip()
    assert text == [full[:full.find(stop)]]


def test_leading_whitespace_is_not_a_stop():
    """A continuation that opens with a line break goes on to its first stop string after the text."""

    class Tok:  # decodes ids as characters: 0 -> "\n", 1 -> "a", 2 -> "b"
        eos_token_id, pad_token_id = None, 0

        def decode(self, ids, skip_special_tokens=True):
            return "".join("\nab"[i] for i in ids)

    class Scripted(torch.nn.Module):  # emits "\n", "a", "b", "\n", "a", ... as its greedy tokens
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.config = LlamaConfig(num_hidden_layers=1, hidden_size=8, num_attention_heads=2, vocab_size=3)
            self.n = 0

        def forward(self, input_ids, attention_mask, position_ids, past_key_values=None, use_cache=True):
            logits = torch.zeros(input_ids.shape[0], input_ids.shape[1], 3)
            logits[:, -1, [0, 1, 2, 0][self.n % 4]] = 1.0
            self.n += 1
            return type("O", (), {"logits": logits})()

    assert generate_texts(Scripted(), Tok(), [[1]], max_new_tokens=8, stop=["\n"]) == ["ab"]


def test_cut_at_stop():
    assert cut_at_stop("ab. c\nd", ["\n", "."]) == "ab"
    assert cut_at_stop("ab\nc", ["", "z"]) == "ab\nc"
    assert cut_at_stop("\nab", ["\n"]) == ""


@pytest.mark.parametrize("arch", ARCHS)
def test_lora_model_matches_its_generate(arch):
    from peft import LoraConfig, inject_adapter_in_model

    tok, model = causal_lm(arch)
    prompts = prompts_of(tok, 4)
    base = greedy_decode(model, prompts, max_new_tokens=8, pad_id=pad_of(tok))
    targets = ["c_attn"] if arch == "gpt2" else ["q_proj", "v_proj"]
    torch.manual_seed(0)
    # init_lora_weights=False: random A and B, so the adapter changes the model (B = 0 would not)
    inject_adapter_in_model(LoraConfig(r=4, target_modules=targets, init_lora_weights=False,
                                       fan_in_fan_out=arch == "gpt2"), model)
    assert any("lora_" in name for name, _ in model.named_parameters())
    eos = [model.config.eos_token_id]
    ours = greedy_decode(model, prompts, max_new_tokens=8, pad_id=pad_of(tok), eos_ids=eos)
    assert ours == hf_greedy(model, prompts, pad_of(tok), 8, eos)
    assert ours != base


def test_eval_mode_and_training_flag_restored():
    tok, model = causal_lm("gpt2")  # GPT-2 has dropout: train mode would decode at random
    prompts = prompts_of(tok, 3)
    expected = greedy_decode(model, prompts, max_new_tokens=6, pad_id=pad_of(tok))
    model.train()
    assert greedy_decode(model, prompts, max_new_tokens=6, pad_id=pad_of(tok)) == expected
    assert model.training
    assert torch.is_grad_enabled()  # no_grad did not leak


def test_user_errors():
    tok, model = causal_lm("gpt2")
    with pytest.raises(LmftError, match="empty"):
        greedy_decode(model, [[5], []], max_new_tokens=3, pad_id=0)
    with pytest.raises(LmftError, match="positions"):
        greedy_decode(model, [[5] * 290], max_new_tokens=20, pad_id=0)
    with pytest.raises(LmftError, match="max_new_tokens"):
        greedy_decode(model, [[5]], max_new_tokens=0, pad_id=0)
