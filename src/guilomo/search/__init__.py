"""Stage 1 of GuiLoMo: search expert counts and ranks with GuidedSelection Vectors (GSVs).

Public API::

    from guilomo.search import (
        SearchSettings, inject_search_adapter, SearchLoop, SearchModule, Architect,
        collect_gsvs, read_allocation, fit_budget, run_search,
    )
"""

from guilomo.search.architect import Architect, restore_optimizer, snapshot_optimizer
from guilomo.search.config import InnerOptim, OuterOptim, SearchSettings
from guilomo.search.fill import FillReport
from guilomo.search.gsv import expert_mask, rank_mask
from guilomo.search.layer import (
    SearchLoraMoELinear,
    gsv_parameters,
    inject_search_adapter,
    inner_parameters,
    search_layers,
)
from guilomo.search.loop import SearchLoop
from guilomo.search.module import SearchModule
from guilomo.search.readout import ModuleGSVs, collect_gsvs, minimum_allocation, read_allocation
from guilomo.search.run import run_search
from guilomo.search.trim import FitReport, fit_budget

__all__ = [
    "Architect",
    "FillReport",
    "FitReport",
    "InnerOptim",
    "ModuleGSVs",
    "OuterOptim",
    "SearchLoop",
    "SearchLoraMoELinear",
    "SearchModule",
    "SearchSettings",
    "collect_gsvs",
    "expert_mask",
    "fit_budget",
    "gsv_parameters",
    "inject_search_adapter",
    "inner_parameters",
    "minimum_allocation",
    "rank_mask",
    "read_allocation",
    "restore_optimizer",
    "run_search",
    "search_layers",
    "snapshot_optimizer",
]
