"""What ends a search: the GSV read-out, trimmed to the budget and filled by the credit.

:func:`settle` takes the read-out (:func:`~guilomo.search.readout.read_allocation`) and:

- with an active budget, trims what is over it, least confident units first
  (:func:`~guilomo.search.trim.fit_budget`);
- when the budget was inside the search (``budget_mode="lagrangian"``, ``credits``
  given), spends what it leaves on the units the smoothed credit values, then
  (``budget_fill="spend"``) grows the result in proportion
  (:func:`~guilomo.search.fill.spend_budget`);
- post hoc (``budget_mode="posthoc"``) only trims.

:class:`SearchOutcome` holds the read-out, the final allocation and the diagnostics, and
writes the console report (:func:`~guilomo.search.diagnostics.report_lines`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from guilomo.allocation import Allocation
from guilomo.budget import Budget
from guilomo.search.config import SearchSettings
from guilomo.search.diagnostics import report_lines, report_warnings
from guilomo.search.fill import ModuleCredits, spend_budget
from guilomo.search.readout import ModuleGSVs
from guilomo.search.trim import fit_budget


def settle(
    read: Allocation,
    gsvs: Mapping[str, ModuleGSVs],
    credits: Mapping[str, ModuleCredits] | None,
    budget: Budget,
    shapes: Mapping[str, tuple[int, int]],
    groups: Mapping[str, Sequence[str]] | None,
    settings: SearchSettings,
) -> tuple[Allocation, dict]:
    """The final allocation from the read-out ``read``, and the record of ``meta.budget_fit``."""
    allocation, report = fit_budget(read, gsvs, budget, shapes, groups, settings.min_experts)
    fit = report.summary()
    if credits is not None and budget.active:  # the budget was in the search: spend the rest
        allocation, filled = spend_budget(
            allocation,
            credits,
            budget,
            shapes,
            groups,
            parsimony=settings.parsimony,
            fill=settings.budget_fill,
        )
        fit.update(mode="lagrangian", **filled)
    elif budget.active:
        fit["mode"] = "posthoc"
    return allocation, fit


@dataclass
class SearchOutcome:
    """A finished search: the GSV read-out, the final allocation (with its ``meta``), the
    diagnostics (``meta.diagnostics``) and the budget."""

    read: Allocation
    allocation: Allocation
    diagnostics: dict
    budget: Budget

    def report_lines(self) -> list[str]:
        """The console report: what the search did, and what the budget took or added."""
        meta = self.allocation.meta
        spent = {**self.budget.to_dict(), "spent": meta["budget_spent"], "fit": meta["budget_fit"]}
        return report_lines(self.diagnostics, spent if self.budget.active else None)

    def warnings(self) -> list[str]:
        """Why the search may not be trusted (it did not move, or had not settled)."""
        return report_warnings(self.diagnostics)
