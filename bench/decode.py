"""Greedy decoding: lmft's KV-cache decoder beside transformers' ``generate`` and a loop without a cache.

    python bench/decode.py [--layers 6] [--batch 8] [--prompt 96] [--new 24] [--threads 1] [--repeat 3]
                           [--device cpu|cuda]

The model has SmolLM2-135M's shape (Llama, hidden 576, 9 heads, 3 key/value heads, intermediate
1536, vocabulary 49152, tied embeddings) with ``--layers`` of its 30 blocks and random weights;
the prompts are random tokens of ``--prompt`` tokens, the longest, down to half that (left padding).
Each decoder makes ``--new`` tokens per prompt (no EOS, no stop string) and the three must agree
token for token:

- ``lmft``: :func:`lmft.finetune.decode.greedy_decode` (one prefill, then one token a step with the cache);
- ``generate``: ``model.generate(do_sample=False)`` on the same left-padded batch;
- ``no-cache``: the whole sequence through the model at every step, the argmax of its last position.

Times are the least of ``--repeat`` runs. The last line is
``no-cache / lmft = X.XXx; lmft / generate = Y.YYx``.
"""

from __future__ import annotations

import argparse
import time

import torch

from lmft.finetune.decode import greedy_decode, left_pad, positions

SMOLLM2 = dict(vocab_size=49152, hidden_size=576, num_attention_heads=9, num_key_value_heads=3,
               intermediate_size=1536, max_position_embeddings=8192, tie_word_embeddings=True)


def no_cache(model: torch.nn.Module, prompts: list[list[int]], new: int, pad: int) -> list[list[int]]:
    """Greedy continuations without a cache: every step runs the whole left-padded sequence."""
    ids, mask = left_pad(prompts, pad)
    out = []
    with torch.no_grad():
        for _ in range(new):
            nxt = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask)).logits[:, -1].argmax(-1)
            out.append(nxt)
            ids = torch.cat([ids, nxt[:, None]], 1)
            mask = torch.cat([mask, mask.new_ones(len(prompts), 1)], 1)
    return torch.stack(out, 1).tolist()


def generate(model: torch.nn.Module, prompts: list[list[int]], new: int, pad: int) -> list[list[int]]:
    ids, mask = left_pad(prompts, pad)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=new,
                             min_new_tokens=new, pad_token_id=pad, eos_token_id=None)
    return out[:, ids.shape[1]:].tolist()


def best_time(fn, repeat: int) -> tuple[float, list[list[int]]]:
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=96)
    ap.add_argument("--new", type=int, default=24)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(num_hidden_layers=args.layers, **SMOLLM2)).eval().to(args.device)
    model.generation_config.eos_token_id = None
    gen = torch.Generator().manual_seed(0)
    lengths = torch.linspace(args.prompt, args.prompt // 2, args.batch).round().long().tolist()
    prompts = [torch.randint(1, SMOLLM2["vocab_size"], (n,), generator=gen).tolist() for n in lengths]
    pad = 0
    rows = {
        "lmft": best_time(lambda: greedy_decode(model, prompts, max_new_tokens=args.new, pad_id=pad,
                                                batch_size=args.batch, device=args.device), args.repeat),
        "generate": best_time(lambda: generate(model, prompts, args.new, pad), args.repeat),
        "no-cache": best_time(lambda: no_cache(model, prompts, args.new, pad), args.repeat),
    }
    same = rows["lmft"][1] == rows["generate"][1] == rows["no-cache"][1]
    print(f"SmolLM2 shape, {args.layers} layers, {args.batch} prompts of {lengths[-1]}-{lengths[0]} tokens, "
          f"{args.new} new tokens, {args.threads} thread(s), {args.device}; same tokens: {same}")
    for name, (t, _) in rows.items():
        print(f"{name:10s} {t:8.2f} s  {args.batch * args.new / t:8.1f} tokens/s")
    if not same:
        raise SystemExit("the decoders disagree")
    print(f"no-cache / lmft = {rows['no-cache'][0] / rows['lmft'][0]:.2f}x; "
          f"lmft / generate = {rows['lmft'][0] / rows['generate'][0]:.2f}x")


if __name__ == "__main__":
    main()
