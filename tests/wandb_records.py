"""Read an offline W&B run back from its ``run-<id>.wandb`` file (wandb 0.31 has no reader).

The file is a 7-byte header (``:W&B``, 2 magic bytes, a version byte) followed by a
LevelDB-style log: 32 KiB blocks of records, each a 7-byte header (CRC-32 of the type
byte then the data, little-endian uint32; data length, uint16; type: 1 full, 2 first,
3 middle, 4 last piece) and its data; a block's tail shorter than a header is zero
padding. Joined pieces are ``wandb_internal_pb2.Record`` messages. Every checksum is
verified, so a misread file fails loudly instead of yielding garbage.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def raw_records(path: str | Path):
    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a .wandb file (header {data[:7]!r})")
    pos, pieces = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # zero padding at the end of a block
            pos += left
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if kind == 0 and length == 0 and crc == 0:  # unwritten space (preallocated tail)
            pos += left
            continue
        chunk = data[pos + HEADER : pos + HEADER + length]
        if zlib.crc32(chunk, zlib.crc32(bytes([kind]))) != crc or len(chunk) != length:
            raise ValueError(f"{path}: bad record at byte {pos}")
        pos += HEADER + length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pieces = chunk
        elif kind == MIDDLE:
            pieces += chunk
        elif kind == LAST:
            yield pieces + chunk
            pieces = b""
        else:
            raise ValueError(f"{path}: unknown record type {kind} at byte {pos}")


def _put(d: dict, item) -> None:
    """``d[key] = value``; a nested key (a media value's fields) makes nested dicts."""
    value = json.loads(item.value_json)
    if item.key:
        d[item.key] = value
        return
    *outer, last = item.nested_key
    for k in outer:
        d = d.setdefault(k, {})
    d[last] = value


@dataclass
class WandbRun:
    path: Path
    run_id: str = ""
    name: str = ""
    group: str = ""
    job_type: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    exit_code: int | None = None

    @property
    def files(self) -> Path:
        return self.path.parent / "files"

    def table(self, key: str) -> dict:
        """The JSON of a logged ``wandb.Table`` (``{"columns": [...], "data": [[...]]}``)."""
        return json.loads((self.files / self.summary[key]["path"]).read_text())


def read_run(path: str | Path) -> WandbRun:
    """A run's identity, config, history rows, final summary and exit code."""
    run = WandbRun(Path(path))
    for data in raw_records(path):
        rec = pb.Record()
        rec.ParseFromString(data)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            run.run_id, run.name, run.group = r.run_id, r.display_name, r.run_group
            run.job_type, run.tags = r.job_type, list(r.tags)
            for item in r.config.update:
                _put(run.config, item)
        elif kind == "config":
            for item in rec.config.update:
                _put(run.config, item)
        elif kind == "history":
            row: dict = {}
            for item in rec.history.item:
                _put(row, item)
            run.history.append(row)
        elif kind == "summary":
            for item in rec.summary.update:
                _put(run.summary, item)
            for item in rec.summary.remove:
                run.summary.pop(item.key, None)
        elif kind == "exit":
            run.exit_code = rec.exit.exit_code
    return run


def find_runs(root: str | Path) -> list[WandbRun]:
    """Every offline run under ``root``, by file path."""
    return [read_run(p) for p in sorted(Path(root).rglob("offline-run-*/run-*.wandb"))]
