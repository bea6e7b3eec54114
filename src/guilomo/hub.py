"""Share the folders guilomo writes on the Hugging Face Hub, and fetch adapters from it.

:func:`push_to_hub` uploads an adapter folder (ours), a peft LoRA export or a merged
model with ``huggingface_hub``: it first checks the folder (:func:`upload_files`: the
model card and the files its kind needs; never hidden or temporary files,
checkpoints or locks) and uploads exactly those files. :func:`resolve_folder` turns a
local folder or, when the network is allowed, a Hub repo id into a folder.

The command line is ``python -m guilomo.push folder=<dir> repo_id=<user>/<name>
[private=true] [dry_run=true]`` (:mod:`guilomo.tools.push`; ``hf auth login`` or
``HF_TOKEN`` first; ``dry_run=true`` lists the files and uploads nothing).
"""

from __future__ import annotations

import json
from pathlib import Path

from huggingface_hub import HfApi, snapshot_download

from guilomo.moe.card import CARD_FILE
from guilomo.moe.io import CONFIG_FILE, WEIGHTS_FILE, read_adapter_config

SKIP_SUFFIXES = (".tmp", ".ckpt", ".lock", ".pt")


def folder_kind(folder: Path) -> str:
    """``guilomo`` (a LoRA-MoE adapter), ``peft`` (a LoRA export) or ``model`` (a merged
    model); raises ``ValueError`` naming what is missing."""
    if not (folder / CARD_FILE).is_file():
        raise ValueError(f"{folder} has no {CARD_FILE} (model card): re-save or re-export it")
    if (folder / CONFIG_FILE).is_file():
        meta = json.loads((folder / CONFIG_FILE).read_text())
        kind = "guilomo" if "format" in meta else "peft"
        if kind == "guilomo":
            read_adapter_config(folder)  # a bad config stops here, not on the Hub
        if not (folder / WEIGHTS_FILE).is_file():
            raise ValueError(f"{folder} has {CONFIG_FILE} but no {WEIGHTS_FILE}")
        return kind
    if (folder / "config.json").is_file() and any(folder.glob("*.safetensors")):
        return "model"
    raise ValueError(
        f"{folder} is neither an adapter folder ({CONFIG_FILE} + {WEIGHTS_FILE}) nor a "
        "model folder (config.json + *.safetensors)"
    )


def upload_files(folder: str | Path) -> list[str]:
    """The files :func:`push_to_hub` uploads from ``folder`` (relative paths, sorted)."""
    folder = Path(folder)
    folder_kind(folder)
    out = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if p.is_file() and not any(s.startswith(".") for s in rel.parts):
            if not p.name.endswith(SKIP_SUFFIXES):
                out.append(rel.as_posix())
    return out


def push_to_hub(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str | None = None,
    api: HfApi | None = None,
) -> str:
    """Create ``repo_id`` (if needed) and upload :func:`upload_files`; returns the commit URL."""
    files = upload_files(folder)
    api = api or HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    info = api.upload_folder(
        folder_path=str(folder),
        repo_id=repo_id,
        repo_type="model",
        allow_patterns=files,
        commit_message=commit_message or f"Upload {Path(folder).name} with guilomo",
    )
    return str(getattr(info, "commit_url", info))


def resolve_folder(
    path_or_id: str | Path, revision: str | None = None, allow_network: bool = False
) -> Path:
    """A local folder as it is; a Hub repo id downloaded (cached) when ``allow_network``."""
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        return path
    if not allow_network:
        raise FileNotFoundError(
            f"{path_or_id} is not a folder; to download the Hub repo of that name pass "
            "allow_network=True"
        )
    return Path(snapshot_download(repo_id=str(path_or_id), revision=revision))
