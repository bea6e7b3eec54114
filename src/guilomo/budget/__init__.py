"""Capacity budgets: total experts, total rank, or trainable parameters.

The reference GuiLoMo has no budget (capacity is bounded only by N_max and r_max);
a budget makes comparisons with baselines fair. The rules live here once:

- ``Budget.cost(ranks, shape)``: what one module spends (its expert count, its total
  rank, or its trainable parameters); ``Budget.measure`` sums it over an allocation.
- ``Budget.from_config(mapping)``: the one way a config (``budget=...``) becomes a
  ``Budget``, including ``budget=match budget.path=<allocation.json>``, which takes
  the value from what that allocation spends (so baselines train at the searched
  allocation's size without copying numbers by hand).
- ``Budget.check`` / ``check_minimum`` raise with a fix when an allocation does not fit.
- ``check_config(spec)``: the config's kind and value, checked before any weights load.

The arithmetic that makes an allocation spend a budget sits beside this file:
:mod:`guilomo.budget.scale` (``scale_to_budget``, ``apportion``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from guilomo.allocation import Allocation, AllocationError, module_params
from guilomo.utils.checks import ConfigError, check_choice, check_int

KINDS = ("none", "experts", "rank", "params")
CONFIG_KEYS = ("kind", "value", "path")


class BudgetError(AllocationError):
    """A budget that cannot be met, or a budget config that is malformed."""


@dataclass(frozen=True)
class Budget:
    """``kind`` is one of ``none | experts | rank | params``; ``value`` the upper bound.

    ``params`` counts trainable adapter parameters (A, B and routers). ``matched`` is
    the allocation file the value was read from (``budget=match``), else None.
    """

    kind: str = "none"
    value: int | None = None
    matched: str | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise BudgetError(f"budget kind '{self.kind}' is not one of {list(KINDS)}")
        if self.kind != "none" and (self.value is None or self.value <= 0):
            raise BudgetError(f"budget '{self.kind}' needs a positive value, got {self.value}")

    @classmethod
    def from_config(
        cls,
        spec: Budget | Mapping | None,
        shapes: Mapping[str, tuple[int, int]] | None = None,
    ) -> Budget:
        """A ``Budget`` from ``{kind, value}`` or ``{kind, path}`` (None: no budget).

        With ``path`` (an ``allocation.json``), ``value`` is what that allocation spends
        in ``kind`` (default ``params``): measured on ``shapes`` when they cover its
        modules, else (parameters only) its recorded ``meta.trainable_params``.
        """
        if spec is None or isinstance(spec, Budget):
            return spec or cls()
        if not isinstance(spec, Mapping):
            raise BudgetError(f"a budget is a mapping {{kind, value}}, got {type(spec).__name__}")
        unknown = sorted(set(spec) - set(CONFIG_KEYS))
        if unknown:
            raise BudgetError(
                f"unknown budget key(s) {unknown}: a budget takes {list(CONFIG_KEYS)} "
                "(e.g. budget=params budget.value=2000000, or budget=match budget.path=<file>)"
            )
        kind, value, path = spec.get("kind", "none"), spec.get("value"), spec.get("path")
        if path is None:
            if kind == "match":
                raise BudgetError(
                    "budget=match needs the allocation to match: budget.path=<allocation.json> "
                    "(or searched=<allocation.json>)"
                )
            return cls(kind=kind, value=None if value is None else _as_int(value, "value"))
        if value is not None:
            raise BudgetError(
                f"budget.value={value} and budget.path={path} both set: give one (the value "
                "is read from the file when budget.path is set)"
            )
        kind = "params" if kind in ("none", "match", None) else kind
        if kind not in KINDS:
            raise BudgetError(f"budget kind '{kind}' is not one of {list(KINDS)}")
        return cls(
            kind=kind, value=spent_by_file(kind, path, shapes), matched=str(Path(path).resolve())
        )

    @property
    def active(self) -> bool:
        return self.kind != "none"

    def cost(self, ranks: Sequence[int], shape: tuple[int, int] | None = None) -> int:
        """What one module whose experts have ``ranks`` spends in this budget's unit:
        its expert count, its total rank, or (``params`` and ``none``) its trainable
        parameters, which need the module's ``shape = (d_in, d_out)``."""
        if self.kind == "experts":
            return len(ranks)
        if self.kind == "rank":
            return sum(ranks)
        if shape is None:
            raise BudgetError("counting trainable parameters needs the module's (d_in, d_out)")
        return module_params(ranks, *shape)

    def measure(self, allocation: Allocation, shapes: Mapping[str, tuple[int, int]]) -> int:
        """What ``allocation`` spends in this budget's unit (parameters when kind is none)."""
        if self.kind in ("experts", "rank"):
            return sum(self.cost(m.ranks) for m in allocation.modules.values())
        allocation.check_modules(shapes.keys())
        return sum(self.cost(m.ranks, shapes[n]) for n, m in allocation.modules.items())

    def fits(self, allocation: Allocation, shapes: Mapping[str, tuple[int, int]]) -> bool:
        return not self.active or self.measure(allocation, shapes) <= self.value

    def check(self, allocation: Allocation, shapes: Mapping[str, tuple[int, int]]) -> None:
        if not self.fits(allocation, shapes):
            raise BudgetError(
                f"allocation spends {self.measure(allocation, shapes)} {self.kind} but the budget "
                f"is {self.value}: raise the budget or shrink the allocation"
            )

    def check_minimum(self, minimum: Allocation, shapes: Mapping[str, tuple[int, int]]) -> None:
        """Raise when even the smallest allowed allocation does not fit."""
        if not self.fits(minimum, shapes):
            need = self.measure(minimum, shapes)
            raise BudgetError(
                f"budget {self.kind}={self.value} is smaller than the minimum allocation "
                f"({need} {self.kind}: {minimum.summary()}); set budget.value >= {need}, "
                "or target fewer modules/layers"
            )

    def check_maximum(
        self, maximum: Allocation, shapes: Mapping[str, tuple[int, int]], fix: str
    ) -> None:
        """Raise when the budget is more than even the largest allowed allocation spends
        (a budget that must be spent, but cannot be); ``fix`` names the other ways out."""
        most = self.measure(maximum, shapes)
        if self.active and self.value > most:
            raise BudgetError(
                f"budget {self.kind}={self.value} is more than the largest allocation can "
                f"spend ({most} {self.kind}: {maximum.summary()}); set budget.value <= {most}, "
                f"or {fix}"
            )

    def to_dict(self) -> dict:
        out = {"kind": self.kind, "value": self.value}
        if self.matched is not None:
            out["matched"] = self.matched
        return out


def check_config(spec) -> None:
    """The ``budget`` config's kind and value (a :class:`ConfigError` naming the key); the
    full :meth:`Budget.from_config`, which may read a file to match, runs once the module
    shapes are known."""
    spec = spec or {}
    if not isinstance(spec, Mapping):
        raise ConfigError(f"budget={spec!r} must be a config group (budget=params budget.value=N)")
    kind = spec.get("kind", "none")
    check_choice("budget.kind", kind, (*KINDS, "match"))
    path = spec.get("path")
    if "path" in spec and path is None and spec.get("value") is None:  # budget=match
        raise ConfigError(
            "budget=match reads the size to match from an allocation file, and none is set: "
            "pass searched=<allocation.json> (or budget.path=<allocation.json>), or use "
            "budget=params budget.value=N"
        )
    if path is not None:
        if not Path(str(path)).is_file():
            raise ConfigError(
                f"budget.path={path} does not exist: give the allocation.json whose size to "
                "match (searched=<allocation.json> sets it)"
            )
        try:
            Allocation.load(path)
        except AllocationError as e:
            raise ConfigError(f"budget.path={path} is not a valid allocation file: {e}") from e
    elif kind != "none":
        check_int("budget.value", spec.get("value"), 1)


def spent_by_file(kind: str, path, shapes: Mapping[str, tuple[int, int]] | None = None) -> int:
    """What the allocation in ``path`` spends in ``kind`` (see :meth:`Budget.from_config`)."""
    alloc = Allocation.load(path)
    if kind in ("experts", "rank") or (shapes is not None and set(alloc.modules) <= set(shapes)):
        return Budget(kind, 1).measure(alloc, shapes or {})
    recorded = alloc.meta.get("trainable_params")
    if recorded is None:
        raise BudgetError(
            f"budget=match: cannot count the trainable parameters of {path}: its modules are "
            "not all in this model and its meta has no 'trainable_params'; match "
            "budget.kind=experts or rank instead, or use the backbone it was made for"
        )
    return _as_int(recorded, f"meta.trainable_params of {path}")


def _as_int(x, what: str) -> int:
    """An int, or an integral float (``budget.value=2e6``); anything else is an error."""
    if isinstance(x, float) and x.is_integer():
        return int(x)
    if isinstance(x, bool) or not isinstance(x, int):
        raise BudgetError(f"budget {what} must be an integer, got {x!r}")
    return x
