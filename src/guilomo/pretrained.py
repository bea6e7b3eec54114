"""One call from a trained adapter folder (or Hub repo) to a model that can ``.generate``.

``guilomo.from_pretrained(path)`` reads the adapter's config, rebuilds the backbone it
records (:mod:`guilomo.moe.provenance`: the same source, depth and dtype), checks the
base weights' checksum, injects the LoRA-MoE with its weights, and returns
``(model, tokenizer)`` in eval mode. The tokenizer is the one saved with the adapter
(else the backbone's), with left padding so batched ``model.generate`` works.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from transformers import AutoTokenizer

from guilomo.allocation import AllocationError
from guilomo.backbone import DTYPES, load_backbone
from guilomo.hub import resolve_folder
from guilomo.moe.io import load_adapter, read_adapter_config

TOKENIZER_FILE = "tokenizer_config.json"


def from_pretrained(
    path: str | Path,
    *,
    allow_base_mismatch: bool = False,
    backbone: Mapping | None = None,
    cache_dir: str | None = None,
    dtype: str | None = None,
    device: str | None = None,
    revision: str | None = None,
    allow_network: bool = False,
):
    """``(model, tokenizer)``: the recorded backbone with the saved LoRA-MoE, eval mode.

    Args:
        path: an adapter folder (``<run>/adapter``), or a Hub repo id with
            ``allow_network=True`` (``revision`` picks its branch / commit).
        allow_base_mismatch: load even if the backbone's weights are not the ones the
            adapter was trained on (a warning instead of the error).
        backbone: keyword arguments of :func:`guilomo.backbone.load_backbone` that replace
            the recorded ones (needed for format-1 folders, which record none).
        cache_dir: the backbone's cache (guilomo cache root, or the HF cache for hub models).
        dtype, device: where the loaded model goes (after the checksum check, which uses
            the recorded dtype).
    """
    folder = resolve_folder(path, revision=revision, allow_network=allow_network)
    _, _, meta = read_adapter_config(folder)
    loader = backbone_loader(meta, folder, backbone)
    model, tokenizer = load_backbone(**loader, cache_dir=cache_dir)
    load_adapter(model, folder, allow_base_mismatch=allow_base_mismatch)
    if (folder / TOKENIZER_FILE).is_file():
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    if dtype is not None:
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
        model.to(DTYPES[dtype])
    if device is not None:
        model.to(device)
    return model.eval(), tokenizer


def backbone_loader(meta: Mapping, folder: Path, override: Mapping | None = None) -> dict:
    """``load_backbone`` keyword arguments: the recorded ones, updated with ``override``;
    a relative local ``name`` (a merged model's remaining adapter) is relative to ``folder``."""
    recorded = (meta.get("backbone") or {}).get("loader")
    if not recorded and not override:
        raise AllocationError(
            f"{folder} does not record how to load its backbone (saved before format 2; it "
            f"names {meta.get('base_model')!r}): pass backbone={{'name': ..., 'source': ...}}, "
            "the keyword arguments of guilomo.backbone.load_backbone"
        )
    loader = {**(recorded or {}), **(override or {})}
    name = loader.get("name")
    if loader.get("source", "hub") == "hub" and isinstance(name, str) and name.startswith("."):
        loader["name"] = str((folder / name).resolve())
    return loader
