"""Router usage of a LoRA-MoE: which share of the top-k assignments each expert gets.

:class:`RouterUsage` is a Lightning callback. During every validation loop it counts,
for every module with a router, the experts picked for each non-padding token
(forward hooks; the routing is recomputed from the module's input, so the model's
own forward is untouched), then logs per module

- ``router/<L3.q_proj>/max_share``: the largest expert's share (1/N when balanced);
- ``router/<L3.q_proj>/balance``: entropy of the shares / log N (1 balanced, 0 one expert).

``shares`` keeps the last loop's per-expert shares; :meth:`rows` makes a table of them.
"""

from __future__ import annotations

import math

import lightning as L
import torch
from torch import Tensor

from guilomo.allocation import layer_of
from guilomo.allocation_view import short_name
from guilomo.moe import adapter_modules

COLUMNS = ["module", "layer", "kind", "expert", "rank", "share"]


class RouterUsage(L.Callback):
    def __init__(self):
        self.shares: dict[str, Tensor] = {}
        self._counts: dict[str, Tensor] = {}
        self._handles: list = []
        self._ranks: dict[str, list[int]] = {}

    # -- counting -------------------------------------------------------------------------
    def _hook(self, name: str):
        def count(module, args, output):
            x = args[0]
            x2 = x.reshape(-1, x.shape[-1])
            with torch.no_grad():
                bias, _ = module.search_terms()
                _, top_i, _ = module.route(x2, bias)
                mask = module.context.flat_mask(x2.shape[0], x2.device)
                if mask is not None:
                    top_i = top_i[mask]
                counts = torch.bincount(top_i.reshape(-1), minlength=module.num_experts)
            self._counts[name] = self._counts.get(name, 0) + counts.cpu()

        return count

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._counts = {}
        for name, m in adapter_modules(pl_module.model).items():
            if m.router is not None:
                self._ranks[name] = list(m.ranks)
                self._handles.append(m.register_forward_hook(self._hook(name)))

    def _remove_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._remove_hooks()
        shares = {
            name: c.double() / c.sum() for name, c in self._counts.items() if int(c.sum()) > 0
        }
        if not shares:
            return
        self.shares = shares
        pl_module.log_dict(self.scalars(), on_step=False, on_epoch=True)

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._remove_hooks()

    # -- summaries ------------------------------------------------------------------------
    def scalars(self) -> dict[str, float]:
        out = {}
        for name, s in self.shares.items():
            key = f"router/{short_name(name)}"
            p = s[s > 0]
            entropy = float(-(p * p.log()).sum())
            out[f"{key}/max_share"] = float(s.max())
            out[f"{key}/balance"] = entropy / math.log(len(s))
        return out

    def rows(self) -> list[list]:
        """``module, layer, kind, expert, rank, share`` for every expert of every routed module."""
        return [
            [name, layer_of(name), name.split(".")[-1], e, self._ranks[name][e], round(float(v), 6)]
            for name, s in self.shares.items()
            for e, v in enumerate(s)
        ]
