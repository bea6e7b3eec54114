"""How an allocation is shown, the same way by both stages.

- :func:`short_name`: ``model.layers.3.self_attn.q_proj`` -> ``L3.q_proj`` (metric keys);
- :func:`save_heatmap`: a layer x module heatmap of expert counts and mean ranks (PNG);
- :func:`allocation_rows` / :func:`allocation_scalars`: the per-module table and the
  totals every logger gets; :func:`log_allocation` sends the table and the heatmap.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
from lightning.pytorch.loggers import Logger

from guilomo.allocation import Allocation, layer_of
from guilomo.utils.io import atomic_write
from guilomo.utils.loggers import log_image, log_table

ALLOCATION_COLUMNS = ["module", "layer", "kind", "experts", "ranks", "total_rank"]


def short_name(name: str) -> str:
    """``model.layers.3.self_attn.q_proj`` -> ``L3.q_proj``."""
    return f"L{layer_of(name)}.{name.split('.')[-1]}"


def allocation_grid(allocation: Allocation) -> tuple[list[int], list[str], np.ndarray, np.ndarray]:
    """(layers, module kinds, experts[layer, kind], mean rank[layer, kind]); NaN where absent."""
    layers = sorted({layer_of(n) for n in allocation.modules})
    kinds: list[str] = []
    for n in allocation.modules:
        kind = n.split(".")[-1]
        if kind not in kinds:
            kinds.append(kind)
    experts = np.full((len(layers), len(kinds)), np.nan)
    ranks = np.full_like(experts, np.nan)
    for n, m in allocation.modules.items():
        i, j = layers.index(layer_of(n)), kinds.index(n.split(".")[-1])
        experts[i, j] = m.experts
        ranks[i, j] = m.total_rank / m.experts
    return layers, kinds, experts, ranks


def save_heatmap(allocation: Allocation, path: str | Path, title: str | None = None) -> Path:
    """Write a two-panel PNG (experts, mean rank per expert) to ``path``; returns it."""
    # lazy: matplotlib is slow to import and only drawing needs it (its backend set first)
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    layers, kinds, experts, ranks = allocation_grid(allocation)
    height = max(3.0, 0.28 * len(layers) + 1.6)
    fig, axes = plt.subplots(1, 2, figsize=(2.0 + 1.3 * len(kinds), height), squeeze=False)
    panels = (("experts per module", experts, "%d"), ("mean rank per expert", ranks, "%.1f"))
    for ax, (label, data, fmt) in zip(axes[0], panels, strict=True):
        im = ax.imshow(data, aspect="auto", cmap="viridis", interpolation="nearest")
        ax.set_title(label)
        ax.set_xticks(range(len(kinds)), kinds, rotation=45, ha="right")
        ax.set_yticks(range(len(layers)), [str(layer) for layer in layers])
        ax.set_ylabel("layer")
        if data.size <= 400:
            mid = np.nanmin(data) + 0.6 * (np.nanmax(data) - np.nanmin(data))
            for (i, j), v in np.ndenumerate(data):
                if not np.isnan(v):
                    color = "k" if v > mid else "w"  # readable on bright and dark cells
                    ax.text(j, i, fmt % v, ha="center", va="center", color=color, fontsize=7)
        fig.colorbar(im, ax=ax, fraction=0.05)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path


def allocation_rows(allocation: Allocation) -> list[list]:
    """One row per module: ``module, layer, kind, experts, ranks ("8 8 4"), total_rank``."""
    return [
        [
            name,
            layer_of(name),
            name.split(".")[-1],
            m.experts,
            " ".join(map(str, m.ranks)),
            m.total_rank,
        ]  # fmt: skip
        for name, m in allocation.modules.items()
    ]


def allocation_scalars(allocation: Allocation) -> dict[str, float]:
    return {
        "alloc/modules": len(allocation.modules),
        "alloc/experts_total": allocation.total_experts,
        "alloc/rank_total": allocation.total_rank,
    }


def log_allocation(
    loggers: Iterable[Logger], allocation: Allocation, heatmap: str | Path | None, step: int
) -> None:
    """The allocation as a table (module, layer, kind, experts, ranks) and its heatmap."""
    log_table(loggers, "allocation/table", ALLOCATION_COLUMNS, allocation_rows(allocation), step)
    if heatmap is not None:
        log_image(loggers, "allocation/heatmap", heatmap, step)
