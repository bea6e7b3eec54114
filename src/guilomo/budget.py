"""Capacity budgets: total experts, total rank, or trainable parameters.

The reference GuiLoMo has no budget (capacity is bounded only by N_max and r_max);
a budget makes comparisons with baselines fair. ``Budget.measure`` gives what an
allocation spends; ``Budget.check`` raises with a fix when it does not fit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from guilomo.allocation import Allocation, AllocationError

KINDS = ("none", "experts", "rank", "params")


class BudgetError(AllocationError):
    """A budget that cannot be met."""


@dataclass(frozen=True)
class Budget:
    """``kind`` is one of ``none | experts | rank | params``; ``value`` the upper bound.

    ``params`` counts trainable adapter parameters (A, B and routers).
    """

    kind: str = "none"
    value: int | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise BudgetError(f"budget kind '{self.kind}' is not one of {list(KINDS)}")
        if self.kind != "none" and (self.value is None or self.value <= 0):
            raise BudgetError(f"budget '{self.kind}' needs a positive value, got {self.value}")

    @property
    def active(self) -> bool:
        return self.kind != "none"

    def measure(self, allocation: Allocation, shapes: Mapping[str, tuple[int, int]]) -> int:
        """What ``allocation`` spends in this budget's unit (parameters when kind is none)."""
        if self.kind == "experts":
            return allocation.total_experts
        if self.kind == "rank":
            return allocation.total_rank
        return allocation.trainable_params(shapes)

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

    def to_dict(self) -> dict:
        return {"kind": self.kind, "value": self.value}
