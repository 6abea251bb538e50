"""lmft.models.checkpoint: trainable-only safetensors checkpoints that reload to identical logits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lmft.data.tasks import get_task
from lmft.io import ArtifactError, LmftError, load_tensors
from lmft.models.batching import collate, encode_frame, label_ids, pad_id
from lmft.models.checkpoint import apply_state, load_trainable, save_trainable, trainable_state
from lmft.models.heads import build_classifier
from lmft.models.params import select_trainable
from tiny import make_tiny_model_dir, tiny_frame

SST2 = get_task("sst-2")


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {arch: make_tiny_model_dir(root, arch) for arch in ("bert", "roberta", "gpt2", "llama")}


def _tuned(model_json: Path, head: str, mode: str, steps: int = 3):
    """A classifier after a few SGD steps in ``mode``, and a batch to score."""
    torch.manual_seed(0)
    clf, tok = build_classifier(model_json, SST2, head)
    select_trainable(clf, mode)
    df = tiny_frame(6)
    batch = collate(encode_frame(df, SST2, tok, causal=clf.causal), label_ids(df, SST2), pad_id(tok))
    labels = batch.pop("labels")
    opt = torch.optim.SGD([p for p in clf.parameters() if p.requires_grad], lr=0.5)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(clf(**batch), labels).backward()
        opt.step()
    return clf, batch


def _fresh(model_json: Path, head: str, mode: str):
    torch.manual_seed(123)  # a different LoRA A init: the checkpoint must overwrite it
    clf, _ = build_classifier(model_json, SST2, head)
    select_trainable(clf, mode)
    return clf


@pytest.mark.parametrize("arch,head,mode", [("bert", "prompt", "all"), ("bert", "prompt", "lora:2"),
                                            ("bert", "prompt", "bias"), ("roberta", "cls", "lora:2"),
                                            ("gpt2", "causal", "lora:2"), ("llama", "cls", "all"),
                                            ("gpt2", "cls", "last:1"), ("llama", "causal", "prefix:2"),
                                            ("bert", "prompt", "prefix:2")])
def test_checkpoint_reloads_to_identical_logits(dirs, tmp_path: Path, arch: str, head: str, mode: str) -> None:
    tuned, batch = _tuned(dirs[arch], head, mode)
    path = tmp_path / "ckpt.safetensors"
    save_trainable(tuned, path, {"mode": mode, "head": head, "task": "sst-2"})
    saved = load_tensors(path)
    assert set(saved) == {n for n, p in tuned.named_parameters() if p.requires_grad}

    fresh = _fresh(dirs[arch], head, mode)
    with torch.no_grad():
        assert not torch.equal(fresh(**batch), tuned(**batch))  # the tuning changed something
        meta = load_trainable(fresh, path)
        assert torch.equal(fresh(**batch), tuned(**batch))
    assert meta["mode"] == mode and meta["task"] == "sst-2"
    assert int(meta["n_trainable"]) == sum(v.numel() for v in saved.values())


def test_checkpoint_holds_only_the_trainable_part(dirs, tmp_path: Path) -> None:
    tuned, _ = _tuned(dirs["bert"], "prompt", "lora:2", steps=1)
    save_trainable(tuned, tmp_path / "lora.safetensors")
    assert all("lora_" in k for k in load_tensors(tmp_path / "lora.safetensors"))
    full = sum(p.numel() for p in tuned.parameters())
    assert sum(v.numel() for v in load_tensors(tmp_path / "lora.safetensors").values()) < full / 10


def test_truncated_and_mismatched_checkpoints(dirs, tmp_path: Path) -> None:
    tuned, _ = _tuned(dirs["bert"], "prompt", "bias", steps=1)
    path = tmp_path / "bias.safetensors"
    save_trainable(tuned, path, {"mode": "bias"})
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ArtifactError, match=str(broken)):
        load_trainable(_fresh(dirs["bert"], "prompt", "bias"), broken)
    with pytest.raises(ArtifactError, match=rf"{path}.*mode 'bias' in the file"):
        load_trainable(_fresh(dirs["bert"], "prompt", "lora:2"), path)
    other = tmp_path / "other.safetensors"  # same names, other shapes: a 3-label task
    clf3, _ = build_classifier(dirs["bert"], get_task("tweets-3"), "cls")
    select_trainable(clf3, "head")
    save_trainable(clf3, other)
    clf2, _ = build_classifier(dirs["bert"], SST2, "cls")
    select_trainable(clf2, "head")
    with pytest.raises(ArtifactError, match="shapes differ"):
        load_trainable(clf2, other)
    with pytest.raises(ArtifactError, match="file not found"):
        load_trainable(clf2, tmp_path / "missing.safetensors")


def test_trainable_state_and_apply_state(dirs) -> None:
    clf, batch = _tuned(dirs["roberta"], "prompt", "last:1", steps=1)
    state = trainable_state(clf)
    assert list(state) == [n for n, p in clf.named_parameters() if p.requires_grad]
    with torch.no_grad():
        tuned_logits = clf(**batch)
    base = _fresh(dirs["roberta"], "prompt", "last:1")
    with torch.no_grad():
        for p in clf.parameters():  # the state is a copy, not a view of the live parameters
            p.add_(1.0)
        apply_state(base, state)
        assert torch.equal(base(**batch), tuned_logits)
    with pytest.raises(LmftError, match="not in the classifier"):
        apply_state(base, {"backbone.nope.weight": torch.zeros(1)})
    name = next(iter(state))
    with pytest.raises(LmftError, match="shapes differ"):
        apply_state(base, {name: torch.zeros(3)})


def test_save_without_trainable_parameters_is_an_error(dirs, tmp_path: Path) -> None:
    clf, _ = build_classifier(dirs["gpt2"], SST2, "causal")
    for p in clf.parameters():
        p.requires_grad_(False)
    with pytest.raises(LmftError, match="no trainable parameters"):
        save_trainable(clf, tmp_path / "x.safetensors")
