"""lmft.models.heads: the prompt, cls and causal heads against the backbones' own outputs."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch.func import functional_call, jacrev, vmap

from lmft.data.tasks import get_task
from lmft.io import LmftError
from lmft.models.batching import collate, encode_frame, label_ids, pad_id
from lmft.models.heads import Classifier, build_classifier, fit_linear_head
from lmft.models.load import NO_MLM_HEAD_NOTE, prepare
from lmft.models.params import select_trainable
from test_models import write_sentence_pooling
from tiny import make_tiny_model_dir, save_tiny_hf_dir, tiny_frame

SST2 = get_task("sst-2")
CASES = [("bert", True, "prompt"), ("bert", False, "prompt"), ("roberta", True, "prompt"), ("roberta", False, "prompt"),
         ("gpt2", True, "causal"), ("llama", True, "causal"), ("bert", True, "cls"), ("roberta", True, "cls"),
         ("gpt2", True, "cls"), ("llama", True, "cls")]


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, bool], Path]:
    root = tmp_path_factory.mktemp("models")
    return {(a, h): make_tiny_model_dir(root, a, h) for a, h, _ in CASES}


@pytest.fixture(scope="module")
def sentence_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT encoder saved as a sentence-transformers model that pools with the mean (as MiniLM)."""
    folder = save_tiny_hf_dir(tmp_path_factory.mktemp("st"), "bert", mlm_head=False)
    write_sentence_pooling(folder, "mean_tokens")
    prepare(str(folder), folder.parent / "prepared")
    return folder.parent / "prepared" / "model.json"


def _batch(clf: Classifier, tokenizer, n: int = 5, task=SST2) -> dict[str, torch.Tensor]:
    df = tiny_frame(n)
    return collate(encode_frame(df, task, tokenizer, causal=clf.causal), label_ids(df, task), pad_id(tokenizer))


def _inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in batch.items() if k != "labels"}


@pytest.mark.parametrize("arch,mlm,head", CASES)
def test_logits_shape_and_padding_invariance(model_dirs, arch: str, mlm: bool, head: str) -> None:
    clf, tok = build_classifier(model_dirs[arch, mlm], SST2, head)
    assert clf.head == head and clf.causal == (arch in ("gpt2", "llama")) and not clf.training
    batch = _batch(clf, tok)
    assert (batch["attention_mask"] == 0).any()  # the batch is really padded
    with torch.no_grad():
        logits = clf(**_inputs(batch))
        assert logits.shape == (5, 2) and torch.isfinite(logits).all()
        for i in range(5):  # each example alone, unpadded, gives the same logits
            n = int(batch["attention_mask"][i].sum())
            alone = clf(batch["input_ids"][i:i + 1, :n], batch["attention_mask"][i:i + 1, :n],
                        batch["token_type_ids"][i:i + 1, :n], batch["mask_pos"][i:i + 1])
            torch.testing.assert_close(alone[0], logits[i], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch,head", [("bert", "prompt"), ("roberta", "prompt"), ("gpt2", "causal"),
                                       ("llama", "causal")])
def test_label_word_logits_match_the_lm(model_dirs, arch: str, head: str) -> None:
    """prompt/causal logits are the backbone's own vocabulary logits at mask_pos, at the label words."""
    clf, tok = build_classifier(model_dirs[arch, True], SST2, head)
    batch = _batch(clf, tok)
    ids = [tok.encode(" " + w, add_special_tokens=False)[0] for w in SST2.label_words]
    kwargs = {"token_type_ids": batch["token_type_ids"]} if arch == "bert" else {}
    with torch.no_grad():
        vocab = clf.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **kwargs).logits
        expected = vocab[torch.arange(5), batch["mask_pos"]][:, ids]
        torch.testing.assert_close(clf(**_inputs(batch)), expected, atol=1e-5, rtol=1e-5)
    assert clf.label_ids.tolist() == ids


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_encoder_without_mlm_head_ties_decoder(model_dirs, arch: str) -> None:
    clf, tok = build_classifier(model_dirs[arch, False], SST2, "prompt")
    assert NO_MLM_HEAD_NOTE in clf.notes and clf.lm_head is None
    batch = _batch(clf, tok)
    with torch.no_grad():
        h = clf.features(**_inputs(batch))
        emb = clf.backbone.get_input_embeddings().weight
        torch.testing.assert_close(clf(**_inputs(batch)), h @ emb[clf.label_ids].T)
    assert clf.head_parameter_names() == []


def test_mask_position_is_the_mask_token(model_dirs) -> None:
    clf, tok = build_classifier(model_dirs["bert", True], SST2, "prompt")
    batch = _batch(clf, tok)
    assert (batch["input_ids"][torch.arange(5), batch["mask_pos"]] == tok.mask_token_id).all()


def test_token_types_only_where_the_model_has_them(model_dirs) -> None:
    bert, tok_b = build_classifier(model_dirs["bert", True], SST2, "prompt")
    roberta, tok_r = build_classifier(model_dirs["roberta", True], SST2, "prompt")
    assert bert.use_token_types and not roberta.use_token_types
    with torch.no_grad():
        b = _inputs(_batch(bert, tok_b))
        assert not torch.allclose(bert(**b), bert(**(b | {"token_type_ids": 1 - b["token_type_ids"]})))
        r = _inputs(_batch(roberta, tok_r))
        # RoBERTa has one segment: the template's segment ids (sep+ bumps them) must be ignored.
        assert torch.equal(roberta(**r), roberta(**(r | {"token_type_ids": r["token_type_ids"] + 1})))


def test_cls_head_reads_first_token_for_encoders_last_prompt_token_for_causal(model_dirs) -> None:
    enc, tok = build_classifier(model_dirs["bert", True], SST2, "cls")
    assert enc.pooling == "cls" and "cls head: cls pooling (as the model was trained)" in enc.notes
    batch = _inputs(_batch(enc, tok))
    with torch.no_grad():
        hidden = enc.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                              token_type_ids=batch["token_type_ids"]).last_hidden_state
        torch.testing.assert_close(enc.features(**batch), hidden[:, 0])
        torch.testing.assert_close(enc(**(batch | {"mask_pos": None})), enc(**batch))  # mask_pos unused
    dec, tok = build_classifier(model_dirs["llama", True], SST2, "cls")
    assert dec.pooling == "last"
    batch = _inputs(_batch(dec, tok))
    assert (batch["mask_pos"] == batch["attention_mask"].sum(1) - 1).all()
    with torch.no_grad():
        hidden = dec.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        torch.testing.assert_close(dec.features(**batch), hidden[torch.arange(5), batch["mask_pos"]])
        torch.testing.assert_close(dec(**(batch | {"mask_pos": None})), dec(**batch))  # the mask finds the last token


def test_mean_pooling_is_the_mean_over_each_inputs_tokens(sentence_model: Path) -> None:
    clf, tok = build_classifier(sentence_model, SST2, "cls")
    assert clf.pooling == "mean" and "cls head: mean pooling (as the model was trained)" in clf.notes
    batch = _inputs(_batch(clf, tok))
    assert (batch["attention_mask"] == 0).any()
    with torch.no_grad():
        feats = clf.features(**batch)
        for i in range(5):  # by hand: each example alone, unpadded, averaged over all its tokens
            n = int(batch["attention_mask"][i].sum())
            hidden = clf.backbone(input_ids=batch["input_ids"][i:i + 1, :n],
                                  token_type_ids=batch["token_type_ids"][i:i + 1, :n]).last_hidden_state[0]
            torch.testing.assert_close(feats[i], hidden.mean(0), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(clf(**batch), clf.linear(feats))


def test_pooling_overrides_the_trained_one(sentence_model: Path) -> None:
    first, tok = build_classifier(sentence_model, SST2, "cls", pooling="cls")
    last, _ = build_classifier(sentence_model, SST2, "cls", pooling="last")
    assert first.pooling == "cls" and "cls head: cls pooling (the model was trained with mean pooling)" in first.notes
    batch = _inputs(_batch(first, tok))
    with torch.no_grad():
        hidden = first.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                token_type_ids=batch["token_type_ids"]).last_hidden_state
        torch.testing.assert_close(first.features(**batch), hidden[:, 0])
        end = batch["attention_mask"].sum(1) - 1
        torch.testing.assert_close(last.features(**(batch | {"mask_pos": None})), hidden[torch.arange(5), end])


def test_mean_pooling_skips_the_prefix_positions(sentence_model: Path) -> None:
    """Prefix tuning's P attended positions have no hidden state: the mean covers the input tokens only."""
    clf, tok = build_classifier(sentence_model, SST2, "cls")
    select_trainable(clf, "prefix:3")
    batch = _inputs(_batch(clf, tok))
    with torch.no_grad():
        feats = clf.features(**batch)
        for i in range(5):
            n = int(batch["attention_mask"][i].sum())
            hidden = clf.backbone(input_ids=batch["input_ids"][i:i + 1, :n], attention_mask=torch.ones(1, 3 + n),
                                  token_type_ids=batch["token_type_ids"][i:i + 1, :n],
                                  past_key_values=clf.prefix.cache(1, clf.backbone.config)).last_hidden_state[0]
            assert hidden.shape[0] == n
            torch.testing.assert_close(feats[i], hidden.mean(0), atol=1e-5, rtol=1e-5)
        without = build_classifier(sentence_model, SST2, "cls")[0].features(**batch)
        assert not torch.allclose(feats, without, atol=1e-3)  # the prefix is attended to


def test_vocab_logits_hold_the_label_word_logits(model_dirs) -> None:
    for arch, head in (("bert", "prompt"), ("gpt2", "causal")):
        clf, tok = build_classifier(model_dirs[arch, True], SST2, head)
        batch = _inputs(_batch(clf, tok))
        with torch.no_grad():
            vocab = clf.vocab_logits(**batch)
            assert vocab.shape == (5, len(tok))
            torch.testing.assert_close(vocab[:, clf.label_ids], clf(**batch))
    tied, tok = build_classifier(model_dirs["bert", False], SST2, "prompt")
    with pytest.raises(LmftError, match="prompt head has none: no MLM head in checkpoint"):
        tied.vocab_logits(**_inputs(_batch(tied, tok)))
    cls, tok = build_classifier(model_dirs["llama", True], SST2, "cls")
    with pytest.raises(LmftError, match="cls head has none: its scores come from a linear layer"):
        cls.vocab_logits(**_inputs(_batch(cls, tok)))


def test_cls_head_init_is_seeded_and_leaves_global_rng(model_dirs) -> None:
    state = torch.random.get_rng_state()
    a, _ = build_classifier(model_dirs["roberta", True], SST2, "cls", seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    b, _ = build_classifier(model_dirs["roberta", True], SST2, "cls", seed=1)
    c, _ = build_classifier(model_dirs["roberta", True], SST2, "cls", seed=2)
    assert torch.equal(a.linear.weight, b.linear.weight) and not torch.equal(a.linear.weight, c.linear.weight)
    assert a.linear.weight.shape == (2, 32) and torch.equal(a.linear.bias, torch.zeros(2))
    assert a.head_parameter_names() == ["linear.weight", "linear.bias"]


def test_head_errors(model_dirs) -> None:
    with pytest.raises(LmftError, match="unknown head 'mlp'"):
        build_classifier(model_dirs["bert", True], SST2, "mlp")
    with pytest.raises(LmftError, match="use head 'causal'"):
        build_classifier(model_dirs["gpt2", True], SST2, "prompt")
    with pytest.raises(LmftError, match="use head 'prompt'"):
        build_classifier(model_dirs["bert", True], SST2, "causal")
    with pytest.raises(LmftError, match="single token"):
        build_classifier(model_dirs["roberta", True], replace(SST2, label_words=("xylophone", "great")), "prompt")
    clf, tok = build_classifier(model_dirs["bert", True], SST2, "prompt")
    batch = _inputs(_batch(clf, tok))
    with pytest.raises(LmftError, match="needs mask_pos"):
        clf(**(batch | {"mask_pos": None}))
    with pytest.raises(LmftError, match="pooling 'mean' is a setting of the cls head; the prompt head reads mask_pos"):
        build_classifier(model_dirs["bert", True], SST2, "prompt", pooling="mean")
    with pytest.raises(LmftError, match="the cls head needs a pooling, one of cls, mean, last; got 'max'"):
        build_classifier(model_dirs["bert", True], SST2, "cls", pooling="max")


def test_five_labels_and_pairs(model_dirs) -> None:
    sst5 = get_task("sst-5")
    clf, tok = build_classifier(model_dirs["bert", True], sst5, "prompt")
    df = tiny_frame(4).assign(label=["0", "2", "4", "3"])
    batch = collate(encode_frame(df, sst5, tok), label_ids(df, sst5), pad_id(tok))
    with torch.no_grad():
        assert clf(**_inputs(batch)).shape == (4, 5)
    rte = get_task("rte")
    clf, tok = build_classifier(model_dirs["llama", True], rte, "causal")
    df = tiny_frame(4, pair=True).assign(label=["entailment", "not_entailment"] * 2)
    batch = collate(encode_frame(df, rte, tok, causal=True), label_ids(df, rte), pad_id(tok))
    with torch.no_grad():
        assert clf(**_inputs(batch)).shape == (4, 2)


@pytest.mark.parametrize("arch,mlm,head,pooling", [("bert", True, "prompt", None), ("roberta", False, "cls", "cls"),
                                                   ("roberta", False, "cls", "mean"), ("gpt2", True, "causal", None),
                                                   ("llama", True, "cls", "last")])
def test_per_example_jacobians_with_vmap(model_dirs, arch: str, mlm: bool, head: str, pooling: str | None) -> None:
    """torch.func.vmap(jacrev) over examples agrees with autograd one example at a time (what eNTK needs)."""
    clf, tok = build_classifier(model_dirs[arch, mlm], SST2, head, pooling=pooling)
    batch = _batch(clf, tok, n=3)
    params = {n: p.detach() for n, p in clf.named_parameters()}

    def logits(p, ids, attn, types, pos):
        return functional_call(clf, p, (ids[None], attn[None], types[None], pos[None]))[0]

    jac = vmap(jacrev(logits), in_dims=(None, 0, 0, 0, 0))(
        params, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], batch["mask_pos"])
    i, c = 1, 1
    n = int(batch["attention_mask"][i].sum())
    out = clf(batch["input_ids"][i:i + 1, :n], batch["attention_mask"][i:i + 1, :n],
              batch["token_type_ids"][i:i + 1, :n], batch["mask_pos"][i:i + 1])[0, c]
    names = list(params)
    grads = torch.autograd.grad(out, [dict(clf.named_parameters())[k] for k in names], allow_unused=True)
    for name, g in zip(names, grads):
        expected = torch.zeros_like(params[name]) if g is None else g
        torch.testing.assert_close(jac[name][i, c], expected, atol=1e-5, rtol=1e-4)
    out_emb = clf.backbone.get_output_embeddings()
    if out_emb is not None and clf.backbone.config.tie_word_embeddings:  # functional_call kept the tie
        assert out_emb.weight is clf.backbone.get_input_embeddings().weight


def test_fit_linear_head_matches_logistic_regression(model_dirs) -> None:
    from sklearn.linear_model import LogisticRegression

    clf, _ = build_classifier(model_dirs["bert", True], SST2, "cls")
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(40, 32, generator=gen)
    labels = (feats[:, 0] + 0.3 * feats[:, 1] > 0).long()
    fit_linear_head(clf, feats, labels, l2=0.5)
    probs = torch.softmax(clf.linear(feats).double(), -1)
    ref = LogisticRegression(C=2.0, max_iter=1000).fit(feats.double().numpy(), labels.numpy())
    torch.testing.assert_close(probs, torch.from_numpy(ref.predict_proba(feats.double().numpy())), atol=1e-5, rtol=1e-4)
    assert (probs.argmax(-1) == labels).float().mean() > 0.9

    three, _ = build_classifier(model_dirs["bert", True], get_task("tweets-3"), "cls")
    fit_linear_head(three, feats, labels)  # class 2 absent: never predicted
    assert (three.linear(feats).argmax(-1) != 2).all()
    with pytest.raises(LmftError, match="do not fit"):
        fit_linear_head(clf, feats[:, :8], labels)
    prompt, _ = build_classifier(model_dirs["bert", True], SST2, "prompt")
    with pytest.raises(LmftError, match="needs the cls head"):
        fit_linear_head(prompt, feats, labels)
