"""Which prompt format an instruction-tuned causal LM reads best, measured on the k-shot dev splits.

    python bench/prompt_format.py [--model results/models/smollm2/model.json] [--task rt-polarity]
                                  [--seeds 13 21 42] [--k 16] [--threads 2]

The embedded SmolLM2 is the *Instruct* model, whose BOS token ``<|im_start|>`` opens a chat turn.
Three renderings of the task's causal template (its text up to the mask, the label word scored as
the next token), zero-shot, on the dev splits of the given seeds (never test):

- ``plain``: the text alone (what the workflow uses: :func:`lmft.data.templates.causal_prefix` adds
  only what the tokenizer prepends by itself, nothing for SmolLM2);
- ``bos``: ``<|im_start|>`` then the text (what the workflow did before);
- ``chat``: the text as the user turn of the model's chat template, then the assistant's turn.

Printed per format: dev accuracy, dev cross-entropy over the label words, the share predicted as
the last label, and the accuracy of the logit-difference ranking split at its median (how much
the format's scores separate the classes once a bias is learnt, which is what fine-tuning starts from).
Needs the prepared model and k-shot files (``snakemake results/models/smollm2/model.json
data/kshot/rt-polarity/16-13/dev.parquet ...``).
"""

from __future__ import annotations

import argparse

import pandas as pd
import torch
import torch.nn.functional as F

from lmft.data.tasks import get_task
from lmft.data.templates import Encoded, encode
from lmft.models.batching import batches, label_ids, pad_id
from lmft.models.heads import build_classifier

FORMATS = ("plain", "bos", "chat")


def encode_as(fmt: str, template: str, text: str, tokenizer, max_length: int) -> Encoded:
    """The causal prompt of ``text`` in format ``fmt``; ``mask_pos`` is its last token."""
    plain = encode(template, [text, None], tokenizer, max_length, causal=True).input_ids
    if fmt == "plain":
        ids = plain
    elif fmt == "bos":
        ids = [tokenizer.bos_token_id] + plain
    else:
        turn = tokenizer.apply_chat_template([{"role": "user", "content": tokenizer.decode(plain)}], tokenize=False,
                                             add_generation_prompt=True)
        ids = tokenizer.encode(turn, add_special_tokens=False)
    return Encoded(ids, [0] * len(ids), len(ids) - 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="results/models/smollm2/model.json")
    ap.add_argument("--task", default="rt-polarity")
    ap.add_argument("--seeds", type=int, nargs="+", default=[13, 21, 42])
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    task = get_task(args.task)
    clf, tok = build_classifier(args.model, task, "causal")
    dev = pd.concat([pd.read_parquet(f"data/kshot/{task.name}/{args.k}-{s}/dev.parquet") for s in args.seeds])
    y = torch.tensor(label_ids(dev, task))
    print(f"{task.name}, k={args.k}, dev of seeds {args.seeds}: {len(y)} examples, zero-shot")
    print(f"{'format':<7} {'acc':>6} {'loss':>6} {'pred_last':>9} {'median_split_acc':>16} {'tokens':>6}")
    for fmt in FORMATS:
        items = [encode_as(fmt, task.causal_template, t, tok, task.max_length) for t in dev["text_a"]]
        with torch.no_grad():
            logits = torch.cat([clf(b["input_ids"], b["attention_mask"], None, b["mask_pos"])
                                for b in batches(items, None, 32, pad_id(tok))])
        pred = logits.argmax(1)
        diff = logits[:, -1] - logits[:, 0]
        split = (diff > diff.median()).long() * (task.num_labels - 1)
        print(f"{fmt:<7} {(pred == y).float().mean():6.3f} {F.cross_entropy(logits, y):6.3f} "
              f"{(pred == task.num_labels - 1).float().mean():9.2f} {(split == y).float().mean():16.3f} "
              f"{sum(len(i.input_ids) for i in items) / len(items):6.1f}")


if __name__ == "__main__":
    main()
