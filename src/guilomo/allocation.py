"""The allocation: how many LoRA experts each adapted module gets and the rank of each.

An :class:`Allocation` maps a module's full path (``model.layers.0.self_attn.q_proj``)
to a :class:`ModuleAllocation` (expert count, one rank per expert, optional top-k)
and carries metadata (backbone, task, source, budget, trainable parameters).
It validates on creation and on load, and is saved as ``allocation.json``::

    {"format": "guilomo.allocation/1",
     "top_k": 2,
     "modules": {"model.layers.0.self_attn.q_proj": {"experts": 3, "ranks": [8, 4, 2]}, ...},
     "meta": {"backbone": "smollm2_135m", "task": "...", "source": "guilomo-search", ...}}
"""

from __future__ import annotations

import json
import operator
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from guilomo.utils.io import atomic_write_text

FORMAT = "guilomo.allocation/1"


# an allocation.json of a 7B model with its search record is well under 1 MB
MAX_FILE_BYTES = 16 * 2**20


class AllocationError(ValueError):
    """An allocation that is malformed or does not fit the model it is used with."""


def module_params(ranks: Sequence[int], d_in: int, d_out: int, router: bool = True) -> int:
    """Trainable parameters of one module whose experts have ``ranks``: A (r x d_in) and
    B (d_out x r) per expert, plus the router (N x d_in) when there is more than one expert."""
    lora = sum(ranks) * (d_in + d_out)
    return lora + (len(ranks) * d_in if router and len(ranks) > 1 else 0)


def module_shapes(modules: Mapping) -> dict[str, tuple[int, int]]:
    """``{name: (d_in, d_out)}`` of linear modules (anything with ``in_features`` and
    ``out_features``, e.g. ``nn.Linear``) or of ``(d_in, d_out)`` pairs (kept), for
    parameter counts and budgets."""
    shapes = {}
    for n, m in modules.items():
        if hasattr(m, "in_features") and hasattr(m, "out_features"):
            shapes[n] = (int(m.in_features), int(m.out_features))
        elif isinstance(m, Sequence) and len(m) == 2:
            shapes[n] = (int(m[0]), int(m[1]))
        else:
            raise TypeError(f"'{n}': expected nn.Linear or a (d_in, d_out) pair, got {m!r}")
    return shapes


@dataclass(frozen=True)
class ModuleAllocation:
    """Experts of one adapted linear layer: ``ranks[i]`` is the rank of expert ``i``."""

    ranks: tuple[int, ...]
    top_k: int | None = None  # None: the allocation's default top-k

    def __post_init__(self):
        ranks = tuple(self.ranks)
        if not ranks:
            raise AllocationError("a module needs at least one expert (ranks is empty)")
        if not all(_is_int(r) for r in ranks):  # never truncate 2.5 to 2 silently
            raise AllocationError(f"every rank must be an integer, got {list(ranks)!r}")
        object.__setattr__(self, "ranks", tuple(operator.index(r) for r in ranks))
        if any(r < 1 for r in self.ranks):
            raise AllocationError(f"every rank must be >= 1, got {list(self.ranks)}")
        if self.top_k is not None:
            if not _is_int(self.top_k):
                raise AllocationError(f"top_k must be an integer, got {self.top_k!r}")
            object.__setattr__(self, "top_k", operator.index(self.top_k))
            if self.top_k < 1:
                raise AllocationError(f"top_k must be >= 1, got {self.top_k}")
            if self.top_k > len(self.ranks):
                raise AllocationError(
                    f"top_k={self.top_k} is greater than the number of experts "
                    f"({len(self.ranks)}): lower top_k or add experts"
                )

    @property
    def experts(self) -> int:
        return len(self.ranks)

    @property
    def total_rank(self) -> int:
        return sum(self.ranks)

    def params(self, d_in: int, d_out: int, router: bool = True) -> int:
        """Trainable parameters of this module (see :func:`module_params`)."""
        return module_params(self.ranks, d_in, d_out, router)


@dataclass
class Allocation:
    """Per-module expert counts and ranks, plus the metadata of how they were obtained."""

    modules: dict[str, ModuleAllocation]
    top_k: int = 2
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.modules:
            raise AllocationError("allocation has no modules")
        if not _is_int(self.top_k):
            raise AllocationError(f"top_k must be an integer, got {self.top_k!r}")
        self.top_k = operator.index(self.top_k)  # a plain int (JSON-serialisable)
        if self.top_k < 1:
            raise AllocationError(f"top_k must be >= 1, got {self.top_k}")
        self.modules = {
            name: m if isinstance(m, ModuleAllocation) else _module_from_dict(name, m)
            for name, m in self.modules.items()
        }

    def top_k_of(self, name: str) -> int:
        """Top-k used by a module: its own, else the default, never more than its experts."""
        m = self.modules[name]
        return min(m.top_k or self.top_k, m.experts)

    # -- summaries -------------------------------------------------------------------
    @property
    def total_experts(self) -> int:
        return sum(m.experts for m in self.modules.values())

    @property
    def total_rank(self) -> int:
        return sum(m.total_rank for m in self.modules.values())

    def trainable_params(self, shapes: Mapping[str, tuple[int, int]], router: bool = True) -> int:
        """Trainable parameters given ``shapes[name] = (d_in, d_out)`` of every module."""
        self.check_modules(shapes.keys())
        return sum(m.params(*shapes[n], router=router) for n, m in self.modules.items())

    # -- validation against a model ---------------------------------------------------
    def check_modules(self, available: Iterable[str]) -> None:
        """Raise if the allocation names modules the model does not have."""
        available = set(available)
        unknown = sorted(set(self.modules) - available)
        if unknown:
            hint = sorted(available)[:3]
            backbone = self.meta.get("backbone", "?")
            raise AllocationError(
                f"{len(unknown)} module(s) of the allocation are not in this model, e.g. "
                f"{unknown[:3]}; the model has e.g. {hint}. The allocation was made for "
                f"backbone '{backbone}' (num_layers={self.meta.get('num_layers')}): load the "
                "same backbone, or make a new allocation for this one."
            )

    def check_ranks(self, shapes: Mapping[str, tuple[int, int]]) -> None:
        """Raise if an expert's rank exceeds ``min(d_in, d_out)`` of its module: ranks beyond
        the layer's width add parameters (and memory) but no capacity."""
        for name, m in self.modules.items():
            if name not in shapes:
                continue
            width = min(int(d) for d in shapes[name])
            if max(m.ranks) > width:
                raise AllocationError(
                    f"module '{name}' has an expert of rank {max(m.ranks)} but the layer is "
                    f"{shapes[name][0]} -> {shapes[name][1]}, so no rank above {width} adds "
                    "capacity: lower the rank (allocation.rank), or the budget"
                )

    def check_backbone(self, backbone_id: str | None, num_layers: int | None = None) -> None:
        """Raise if the metadata says the allocation was made for another backbone."""
        made_for = self.meta.get("backbone")
        if backbone_id and made_for and made_for != backbone_id:
            raise AllocationError(
                f"allocation was made for backbone '{made_for}', not '{backbone_id}': "
                f"use backbone={made_for}, or search/generate an allocation for {backbone_id}"
            )
        layers = self.meta.get("num_layers")
        if num_layers and layers and int(layers) != int(num_layers):
            raise AllocationError(
                f"allocation was made for {layers} layers but the backbone has {num_layers}: "
                f"set backbone.loader.num_layers={layers} or make a new allocation"
            )

    # -- (de)serialisation -------------------------------------------------------------
    def to_dict(self) -> dict:
        modules = {}
        for name, m in self.modules.items():
            d = {"experts": m.experts, "ranks": list(m.ranks)}
            if m.top_k is not None:
                d["top_k"] = m.top_k
            modules[name] = d
        return {"format": FORMAT, "top_k": self.top_k, "modules": modules, "meta": self.meta}

    @classmethod
    def from_dict(cls, data: Mapping) -> Allocation:
        if not isinstance(data, Mapping) or "modules" not in data:
            raise AllocationError("an allocation is a JSON object with a 'modules' mapping")
        fmt = data.get("format", FORMAT)
        if fmt != FORMAT:
            raise AllocationError(f"unsupported allocation format '{fmt}' (expected '{FORMAT}')")
        if not isinstance(data["modules"], Mapping):
            raise AllocationError("'modules' must map module paths to {experts, ranks}")
        return cls(
            modules=dict(data["modules"]),
            top_k=data.get("top_k", 2),
            meta=_meta_from(data.get("meta")),
        )

    def save(self, path: str | Path) -> Path:
        """Write ``allocation.json`` atomically (a crash never leaves half a file)."""
        path = Path(path)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1, sort_keys=False) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Allocation:
        path = Path(path)
        if not path.is_file():
            raise AllocationError(
                f"allocation file {path} not found: pass the allocation.json written by "
                "search.py (printed at its end), or choose a baseline allocation"
            )
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise AllocationError(
                f"allocation file {path} is {size / 2**20:.0f} MB, more than an allocation "
                f"file holds ({MAX_FILE_BYTES // 2**20} MB at most): pass the allocation.json "
                "written by search.py"
            )
        try:
            data = json.loads(path.read_text(), object_pairs_hook=no_duplicate_keys)
        except AllocationError as e:
            raise AllocationError(f"{path}: {e}") from e
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise AllocationError(
                f"allocation file {path} is not valid JSON ({e}); it may be truncated or "
                "corrupt: re-run search.py or restore the file"
            ) from e
        try:
            return cls.from_dict(data)
        except AllocationError as e:
            raise AllocationError(f"{path}: {e}") from e

    @property
    def method(self) -> str:
        """The exact name of the method that made it (:func:`method_name` of ``meta``)."""
        return method_name(self.meta)

    def summary(self) -> str:
        n = len(self.modules)
        return (
            f"{n} modules, {self.total_experts} experts "
            f"(mean {self.total_experts / n:.2f}), total rank {self.total_rank}, top-{self.top_k}"
        )


def no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    """``json.loads`` hook: a key given twice (e.g. a module listed twice) is an error, not
    a silent "last one wins"."""
    out: dict = {}
    for k, v in pairs:
        if k in out:
            raise AllocationError(f"key '{k}' appears twice in the same JSON object: keep one")
        out[k] = v
    return out


def load_allocation(
    targets: Mapping,
    path: str | Path | None,
    backbone: str | None = None,
    num_layers: int | None = None,
    budget=None,
) -> Allocation:
    """The allocation file at ``path``, checked against the run that will use it.

    The one loader of allocation files (``allocation=file``): the file must be valid
    (:meth:`Allocation.load`), made for this ``backbone`` and depth (``meta.backbone``,
    ``meta.num_layers``, when recorded), name only modules among ``targets`` (the
    modules that may be adapted: ``{name: nn.Linear}`` or ``{name: (d_in, d_out)}``),
    and fit ``budget`` (a :class:`~guilomo.budget.Budget`) when one is given.
    """
    if path is None:
        raise AllocationError(
            "allocation=file needs the file: allocation.path=<allocation.json> "
            "(or searched=<allocation.json>, which budget=match reads too)"
        )
    alloc = Allocation.load(path)
    alloc.check_backbone(backbone, num_layers)
    alloc.check_modules(targets)
    if budget is not None:
        budget.check(alloc, module_shapes(targets))
    return alloc


def _module_from_dict(name: str, d) -> ModuleAllocation:
    try:
        if not isinstance(d, Mapping):
            raise AllocationError("expected {'experts': N, 'ranks': [r_1, ..., r_N]}")
        ranks = d.get("ranks")
        experts = d.get("experts", len(ranks) if isinstance(ranks, list) else None)
        if not isinstance(ranks, list) or not all(
            isinstance(r, int) and not isinstance(r, bool) for r in ranks
        ):
            raise AllocationError(f"'ranks' must be a list of integers, got {ranks!r}")
        if experts != len(ranks):
            raise AllocationError(
                f"'experts' is {experts} but 'ranks' lists {len(ranks)} ranks: give one rank "
                "per expert"
            )
        return ModuleAllocation(ranks=tuple(ranks), top_k=d.get("top_k"))
    except AllocationError as e:
        raise AllocationError(f"module '{name}': {e}") from e


def _is_int(x) -> bool:
    """An integer (int, numpy or 0-d integer tensor), not a bool, float or string."""
    if isinstance(x, bool):
        return False
    try:
        operator.index(x)
    except TypeError:
        return False
    return True


def _meta_from(meta) -> dict:
    if meta is None:
        return {}
    if not isinstance(meta, Mapping):
        raise AllocationError(f"'meta' must be a JSON object, got {type(meta).__name__}")
    layers = meta.get("num_layers")
    if layers is not None and (not _is_int(layers) or layers < 1):
        raise AllocationError(
            f"meta.num_layers must be a positive integer or absent, got {layers!r}"
        )
    backbone = meta.get("backbone")
    if backbone is not None and not isinstance(backbone, str):
        raise AllocationError(f"meta.backbone must be a string or absent, got {backbone!r}")
    return dict(meta)


def uniform(names: Iterable[str], experts: int, rank: int, top_k: int = 2, **meta) -> Allocation:
    """The same ``experts`` experts of rank ``rank`` in every module."""
    names = list(names)
    if experts < 1 or rank < 1:
        raise AllocationError(f"experts and rank must be >= 1, got {experts}, {rank}")
    top_k = min(top_k, experts)
    return Allocation({n: ModuleAllocation((rank,) * experts) for n in names}, top_k, dict(meta))


def layer_of(name: str) -> int:
    """Decoder-layer index in a module path (the first integer component), else -1."""
    for part in name.split("."):
        if part.isdigit():
            return int(part)
    return -1


def method_name(meta: Mapping) -> str:
    """The exact name of the method that made an allocation, from its ``meta``.

    ``guilomo`` for a searched allocation, ``mola_<pattern>`` for MoLA (``mola_2468``;
    counts above 9 are joined by dashes, ``mola_2-4-12``), else the baseline kind
    (``lora``, ``uniform``, ``alphalora``, ``random``); a recorded ``meta.method`` wins.
    """
    if meta.get("method"):
        return str(meta["method"])
    source = str(meta.get("source", ""))
    if source == "guilomo-search":
        return "guilomo"
    kind = (meta.get("baseline") or {}).get("kind") or source.removeprefix("baseline:")
    if kind.startswith("mola"):
        pattern = meta.get("pattern")
        if pattern:
            sep = "" if all(0 <= int(p) <= 9 for p in pattern) else "-"
            return "mola_" + sep.join(str(int(p)) for p in pattern)
    return kind or "unknown"
