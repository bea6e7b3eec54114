"""Which base weights an adapter was trained on, and how to get them again.

Every saved adapter's config holds a ``backbone`` block:

- ``id``: the run's short backbone name (``smollm2_135m``);
- ``hub_id``: the backbone as a Hugging Face Hub id (a model card's ``base_model``);
- ``loader``: the keyword arguments of :func:`guilomo.backbone.load_backbone` that rebuild
  it (``name``, ``source``, ``num_layers``, ``dtype``, ``revision``, ``tiny``; never the
  machine's cache folder);
- ``weights``: how those weights were obtained (:func:`guilomo.backbone.weights_origin`:
  the GGUF file and its quantisation, the hub revision and commit, or a seeded init);
- ``checksum``: :func:`base_checksum` of the base weights.

The checksum rule (``CHECKSUM_RULE``): the model's ``state_dict`` without the adapter's
own tensors, an adapted module's frozen ``<module>.base.<p>`` named ``<module>.<p>`` (so
the adapted model and the fresh backbone give the same value); for every tensor, in
name order, hash ``"<name>:<shape>\\n"`` and then ``SAMPLE`` elements taken at an even
stride from its flattened values (all of them when it has fewer), as float32
little-endian bytes; ``sha256:<hex>`` of it all. It is cheap (~1k values per tensor)
and deterministic across devices and load dtypes of the same values. It tells another
checkpoint, quantisation or depth apart; it is not a defence against an edit of a few
weights.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping

import torch
from torch import nn

from guilomo.allocation import AllocationError
from guilomo.backbone import weights_origin
from guilomo.moe.inject import adapter_modules

log = logging.getLogger(__name__)

CHECKSUM_RULE = "guilomo.base_checksum/1"
SAMPLE = 1024
LOADER_KEYS = ("name", "source", "num_layers", "dtype", "revision", "tiny", "trust_remote_code")
OVERRIDE = "allow_base_mismatch=True"


class BaseMismatchError(AllocationError):
    """The backbone's weights are not the ones the adapter was trained on."""


def backbone_record(
    loader: Mapping, backbone_id: str | None = None, model: nn.Module | None = None
) -> dict:
    """The ``backbone`` block (without the checksum) of a backbone ``load_backbone(**loader)``
    built (``loader`` may hold ``_target_`` / ``cache_dir``: they are left out)."""
    spec = {k: loader[k] for k in LOADER_KEYS if loader.get(k) is not None}
    source = spec.get("source", "hub")
    name = spec.get("name")
    local = name is not None and os.path.isdir(os.path.expanduser(str(name)))
    hub_id = name if source in ("hub", "smollm2_gguf") and not local else None
    return {
        "id": backbone_id,
        "hub_id": hub_id,
        "loader": spec,
        "weights": weights_origin(source, spec.get("revision"), model),
    }


def base_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The base model's tensors by the names a fresh backbone gives them."""
    adapted = set(adapter_modules(model))
    out = {}
    for key, t in model.state_dict().items():
        owner, _, leaf = key.rpartition(".")
        if owner in adapted:
            continue  # lora_A, lora_B, router, search extras
        if owner.endswith(".base") and owner[: -len(".base")] in adapted:
            key = f"{owner[: -len('.base')]}.{leaf}"
        out[key] = t
    return out


@torch.no_grad()
def base_checksum(model: nn.Module) -> str:
    """``sha256:<hex>`` of a fixed sample of the base weights (rule in the module doc)."""
    h = hashlib.sha256()
    for name, t in sorted(base_tensors(model).items()):
        flat = t.detach().reshape(-1)
        step = max(1, flat.numel() // SAMPLE)
        sample = flat[::step][:SAMPLE].to(device="cpu", dtype=torch.float32).contiguous()
        h.update(f"{name}:{tuple(t.shape)}\n".encode())
        h.update(sample.numpy().astype("<f4").tobytes())
    return "sha256:" + h.hexdigest()


def describe(backbone: Mapping) -> str:
    """One line: the hub id (or loader name) and how the weights were obtained."""
    loader = backbone.get("loader") or {}
    name = backbone.get("hub_id") or loader.get("name") or backbone.get("id") or "?"
    weights = backbone.get("weights") or {}
    if weights.get("gguf_file"):
        how = f"the GGUF file {weights['gguf_file']} ({weights.get('quantization')}, from {weights.get('package')})"
    elif weights.get("revision"):
        how = f"hub revision {weights['revision']} (commit {weights.get('commit') or '?'})"
    elif weights.get("merged_from"):
        how = f"a merge into {weights['merged_from']}"
    elif weights.get("random_init"):
        how = f"a seeded random init ({loader.get('source')})"
    else:
        how = "unrecorded weights"
    layers = loader.get("num_layers")
    return f"{name} from {how}" + (f", first {layers} layers" if layers else "")


def check_base(
    backbone: Mapping, model: nn.Module, allow_mismatch: bool = False, where: str = ""
) -> None:
    """Raise :class:`BaseMismatchError` (naming the override) unless ``model`` has the
    base weights whose checksum ``backbone`` records; warn and go on with the override.
    An adapter saved before checksums were recorded is accepted with a warning."""
    recorded = backbone.get("checksum")
    if recorded is None:
        log.warning("%s records no base-weights checksum: the backbone is not checked", where)
        return
    actual = base_checksum(model)
    if actual == recorded:
        return
    msg = (
        f"{where}: the backbone's weights are not the ones this adapter was trained on "
        f"(base checksum {actual[:19]}..., recorded {str(recorded)[:19]}...; it was trained "
        f"on {describe(backbone)}). On other weights the adapter computes something else: "
        f"load the backbone it names, or pass {OVERRIDE} to load it anyway"
    )
    if not allow_mismatch:
        raise BaseMismatchError(msg)
    log.warning("%s (loading anyway: %s)", msg, OVERRIDE)
