"""lmft.finetune.logreg: features, the attached linear layer, C chosen on dev, folded standardisation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lmft.data.tasks import get_task
from lmft.finetune.logreg import attach_linear, extract_features, fit_probe
from lmft.io import LmftError
from lmft.models.encode import encode_split
from lmft.models.evaluate import model_inputs
from lmft.models.heads import build_classifier
from lmft.models.params import count_trainable
from tiny import make_tiny_model_dir, tiny_frame

SST2 = get_task("sst-2")


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("models"), "bert")


@pytest.mark.parametrize("head,pooling", [("prompt", None), ("cls", "mean")])
def test_features_follow_row_order_and_the_head_position(bert: Path, head: str, pooling: str | None) -> None:
    clf, tok = build_classifier(bert, SST2, head, pooling=pooling)
    split = encode_split(tiny_frame(), SST2, tok, clf, name="train")
    feats = extract_features(clf, split, batch_size=5)
    assert feats.shape == (12, 32)
    with torch.no_grad():
        for i in (0, 7, 11):
            alone = clf.features(**model_inputs(split.batch([i])))[0]
            torch.testing.assert_close(feats[i], alone, atol=1e-5, rtol=1e-5)
        if pooling == "mean":  # the probe reads the head's pooled vector: the mean over the example's tokens
            ids = torch.tensor([split.items[7].input_ids])
            types = torch.tensor([split.items[7].token_type_ids])
            hidden = clf.backbone(input_ids=ids, token_type_ids=types).last_hidden_state[0]
            torch.testing.assert_close(feats[7], hidden.mean(0), atol=1e-5, rtol=1e-5)


def test_attached_linear_reads_the_mask_position_and_is_all_that_trains(bert: Path) -> None:
    clf, tok = build_classifier(bert, SST2, "prompt")
    attach_linear(clf)
    assert count_trainable(clf) == 32 * 2 + 2
    assert [n for n, p in clf.named_parameters() if p.requires_grad] == ["linear.weight", "linear.bias"]
    torch.nn.init.normal_(clf.linear.weight)
    batch = encode_split(tiny_frame(4), SST2, tok, clf).batch([0, 1, 2, 3])
    with torch.no_grad():
        torch.testing.assert_close(clf(**model_inputs(batch)), clf.linear(clf.features(**model_inputs(batch))))


def test_fit_probe_picks_c_on_dev_and_folds_standardisation(bert: Path) -> None:
    clf, _ = build_classifier(bert, SST2, "cls")
    attach_linear(clf)
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(400) % 2
    x = torch.randn(400, 32, generator=gen) * 50 + 100  # large, offset features: needs the standardisation
    x[:, 0] += 150 * (2 * y - 1)  # one informative feature
    fit = fit_probe(clf, x[:200], y[:200], x[200:], y[200:], "acc", grid=(1e-4, 1.0, 10.0))
    assert [r["C"] for r in fit.grid] == [1e-4, 1.0, 10.0]
    best = max(fit.grid, key=lambda r: (r["dev_metric"], -r["dev_loss"]))
    assert fit.C == best["C"] and fit.dev_metric == best["dev_metric"] >= 0.98
    with torch.no_grad():
        logits = clf.linear(x[200:])
    assert (logits.argmax(-1) == y[200:]).float().mean() == fit.dev_metric
    z = (x[:200] - x[:200].mean(0)) / x[:200].std(0, unbiased=False)
    from sklearn.linear_model import LogisticRegression

    ref = LogisticRegression(C=fit.C, max_iter=1000).fit(z.double().numpy(), y[:200].numpy())
    zd = ((x[200:] - x[:200].mean(0)) / x[:200].std(0, unbiased=False)).double().numpy()
    torch.testing.assert_close((logits[:, 1] - logits[:, 0]).double(), torch.from_numpy(ref.decision_function(zd)),
                               atol=1e-3, rtol=1e-4)


def test_bad_grid_and_missing_linear_are_named(bert: Path) -> None:
    clf, _ = build_classifier(bert, SST2, "prompt")
    x, y = torch.randn(4, 32), torch.tensor([0, 1, 0, 1])
    with pytest.raises(LmftError, match="call attach_linear first"):
        fit_probe(clf, x, y, x, y, "acc")
    attach_linear(clf)
    with pytest.raises(LmftError, match="positive numbers"):
        fit_probe(clf, x, y, x, y, "acc", grid=(0.0, 1.0))
