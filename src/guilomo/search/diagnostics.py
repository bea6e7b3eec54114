"""Search diagnostics: what the GSVs select now, how far that is from step 0, whether it settled.

A :class:`Selection` is the read-out of all M search modules at once, by the rule of
:mod:`guilomo.search.readout`: ``experts`` (M,), the rank of every one of the n_max
experts ``ranks`` (M, n_max) (kept or not), and the sigmoid margins
(:func:`guilomo.search.gsv.margin`) of the expert GSVs (M,) and rank GSVs (M, n_max).

:class:`SearchDiagnostics` holds the step-0 selection (the read-out of the initial GSVs,
taken before the first outer step) and is updated with the selection after every real
step ``t`` (0-based). With ``kept`` = the experts ``i < experts_t[m]`` kept at ``t``::

    diag/experts_changed     #{m : experts_t[m] != experts_0[m]} / M
    diag/ranks_changed       #{(m, i) kept : ranks_t[m, i] != ranks_0[m, i]} / #kept
    diag/experts_abs_change  mean over m of |experts_t[m] - experts_0[m]|
    diag/ranks_abs_change    mean over kept (m, i) of |ranks_t[m, i] - ranks_0[m, i]|
    diag/expert_flips        sum over the window of  #{m : experts_t[m] != experts_{t-1}[m]}
    diag/rank_flips          sum over the window of  #{(m, i) kept : ranks_t[m, i] != ranks_{t-1}[m, i]}
    diag/expert_flips_total, diag/rank_flips_total   the same sums since step 0
    gsv/expert_margin        mean over m of margin(s_e[m])
    gsv/rank_margin          mean over m of the mean rank-GSV margin of m's kept experts

``ranks_0[m, i]`` is expert i's rank at step 0 even when step 0 dropped it: an expert
that becomes kept counts as changed if its rank GSV moved. Selection ``t - 1`` of step
0 is the step-0 read-out itself. With a shared (layer-granularity) expert GSV every
module of the layer counts. A flip is a change of the *read-out*, so an expert argmax
moving between 0 and 1 (both read 2 experts) is none. The window is ``window`` real
steps, ``[w * window, (w + 1) * window)``: with ``window = log_every_n_steps`` each
logged value is the sum over the steps since the previous log.

The report (:meth:`SearchDiagnostics.report`) also says whether the search moved and
settled: ``tail_steps = ceil(tail_fraction * steps)`` (at least 1), ``converged`` = no
flip of either kind at the last ``tail_steps`` steps, ``unchanged`` = the selection
equals the step-0 one exactly (every expert count and every kept rank). Everything
but the margins is exact integer arithmetic on CPU; the state round-trips through
``state_dict`` (tensors, ints, lists only: loadable with ``weights_only=True``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from guilomo.search.gsv import margin, selected_experts, selected_ranks

DIAGNOSTICS_KEY = "search_diagnostics"  # the tracker's entry in a search checkpoint


class SearchWarning(UserWarning):
    """The search did not move, or had not settled when it stopped."""


@dataclass(frozen=True)
class Selection:
    """Read-out of M modules: experts (M,), ranks (M, n_max), margins (M,), (M, n_max)."""

    experts: Tensor
    ranks: Tensor
    expert_margin: Tensor
    rank_margin: Tensor

    @property
    def kept(self) -> Tensor:
        """(M, n_max) bool: expert i of module m is kept."""
        idx = torch.arange(self.ranks.shape[-1], device=self.ranks.device)
        return idx < self.experts[:, None]

    @property
    def mean_rank(self) -> Tensor:
        """(M,) mean rank of the kept experts."""
        return (self.ranks * self.kept).sum(-1) / self.experts

    @property
    def mean_rank_margin(self) -> Tensor:
        """(M,) mean rank-GSV margin of the kept experts."""
        return (self.rank_margin * self.kept).sum(-1) / self.experts

    @property
    def total_experts(self) -> int:
        return int(self.experts.sum())

    @property
    def total_rank(self) -> int:
        return int((self.ranks * self.kept).sum())

    def module_ranks(self) -> list[list[int]]:
        """Ranks of the kept experts, per module (an allocation's ``ranks`` lists)."""
        return [r[:e] for r, e in zip(self.ranks.tolist(), self.experts.tolist(), strict=True)]

    def cpu(self) -> Selection:
        return Selection(*(getattr(self, f.name).detach().cpu() for f in fields(self)))

    def to_state(self) -> dict[str, Tensor]:
        return {f.name: getattr(self, f.name).clone() for f in fields(self)}

    @classmethod
    def from_state(cls, state: dict[str, Tensor]) -> Selection:
        return cls(**{f.name: state[f.name] for f in fields(cls)})


def select(s_expert: Tensor, s_rank: Tensor) -> Selection:
    """Selection from sigmoid GSVs ``s_expert`` (M, n_max) and ``s_rank`` (M, n_max, r_max)."""
    return Selection(
        selected_experts(s_expert), selected_ranks(s_rank), margin(s_expert), margin(s_rank)
    )


@torch.no_grad()
def selection_of(layers: Iterable) -> Selection:
    """Selection of search layers (objects with ``gsv_expert`` and ``gsv_rank``), vectorised."""
    layers = list(layers)
    s_e = torch.sigmoid(torch.stack([m.gsv_expert.detach().float() for m in layers]))
    s_r = torch.sigmoid(torch.stack([m.gsv_rank.detach().float() for m in layers]))
    return select(s_e, s_r)


def distance(now: Selection, ref: Selection) -> dict[str, float]:
    """How far ``now`` is from ``ref``, over ``now``'s kept experts (see the module doc)."""
    kept = now.kept
    n_kept = int(kept.sum())
    d_e = (now.experts - ref.experts).abs()
    d_r = (now.ranks - ref.ranks).abs() * kept
    return {
        "experts_changed": float((d_e > 0).sum()) / now.experts.numel(),
        "ranks_changed": float((d_r > 0).sum()) / n_kept,
        "experts_abs_change": float(d_e.sum()) / now.experts.numel(),
        "ranks_abs_change": float(d_r.sum()) / n_kept,
    }


def flips(now: Selection, prev: Selection) -> tuple[int, int]:
    """(modules whose expert count changed, kept experts whose rank changed) since ``prev``."""
    return (
        int((now.experts != prev.experts).sum()),
        int(((now.ranks != prev.ranks) & now.kept).sum()),
    )


COMPARED = "the GSV read-out before budget fitting, against the read-out of the initial GSVs"


def _totals(sel: Selection) -> dict:
    return {
        "experts": sel.total_experts,
        "total_rank": sel.total_rank,
        "expert_margin": float(sel.expert_margin.mean()),
        "rank_margin": float(sel.mean_rank_margin.mean()),
    }


class SearchDiagnostics:
    """Step-0 read-out, distance from it, argmax flips, margins; a report at the end.

    Args:
        names: module names (M), to key the step-0 read-out in the report.
        window: real steps per flip window (set it to the logging cadence).
        tail_fraction: share of the last steps that must be flip-free to call it converged.
        history_len: at most this many history records (evenly spaced, thinned by 2).
    """

    def __init__(
        self,
        names: Sequence[str] | None = None,
        window: int = 1,
        tail_fraction: float = 0.1,
        history_len: int = 64,
    ):
        if window < 1 or not 0 < tail_fraction <= 1 or history_len < 2:
            raise ValueError(
                f"need window >= 1, 0 < tail_fraction <= 1, history_len >= 2; got {window}, "
                f"{tail_fraction}, {history_len}"
            )
        self.names = list(names) if names is not None else None
        self.window, self.tail_fraction, self.history_len = window, tail_fraction, history_len
        self.initial: Selection | None = None
        self.current: Selection | None = None
        self.start_step = 0
        self.steps = 0  # the last updated step + 1
        self.flips_total = [0, 0]  # expert, rank
        self.window_flips = [0, 0]
        self.window_index = -1
        self.last_flip: list[int | None] = [None, None]
        self.events: list[list[int]] = []  # [step, expert, rank] flips, steps of the tail only
        self.history: list[dict] = []
        self.history_every = 1

    @property
    def started(self) -> bool:
        return self.initial is not None

    def start(self, selection: Selection, step: int = 0) -> None:
        """Take the step-0 read-out (before the first outer step at real step ``step``)."""
        self.initial = self.current = selection.cpu()
        self.start_step = self.steps = int(step)
        self.history_every = self.window

    def update(self, selection: Selection, step: int) -> dict[str, float]:
        """Record the selection after real step ``step``; returns the metrics."""
        if not self.started:
            raise RuntimeError("SearchDiagnostics.update before start(): take the step-0 read-out")
        now = selection.cpu()
        e, r = flips(now, self.current)
        self.current, self.steps = now, int(step) + 1
        if step // self.window != self.window_index:
            self.window_index, self.window_flips = step // self.window, [0, 0]
        for kind, n in enumerate((e, r)):
            self.flips_total[kind] += n
            self.window_flips[kind] += n
            if n:
                self.last_flip[kind] = int(step)
        if e or r:
            self.events.append([int(step), e, r])
        # the tail's first step never moves back: older events can go
        first = self.steps - self.tail_steps()
        self.events = [ev for ev in self.events if ev[0] >= first]
        if self.steps % self.history_every == 0:
            self._record(step)
        return self.metrics()

    def tail_steps(self) -> int:
        """``ceil(tail_fraction * steps)``, at least 1 (rounded first: 0.1 * 30 is 3.0000000000000004)."""
        return max(1, math.ceil(round(self.tail_fraction * self.steps, 9))) if self.steps else 0

    def metrics(self) -> dict[str, float]:
        """The logged metrics (names in the module doc) for the latest selection."""
        d = distance(self.current, self.initial)
        return {
            **{f"diag/{k}": v for k, v in d.items()},
            "diag/expert_flips": float(self.window_flips[0]),
            "diag/rank_flips": float(self.window_flips[1]),
            "diag/expert_flips_total": float(self.flips_total[0]),
            "diag/rank_flips_total": float(self.flips_total[1]),
            "gsv/expert_margin": float(self.current.expert_margin.mean()),
            "gsv/rank_margin": float(self.current.mean_rank_margin.mean()),
        }

    def _record(self, step: int) -> None:
        m = self.metrics()
        self.history.append(
            {
                "step": int(step),
                **{k.split("/")[1]: round(v, 6) for k, v in m.items() if not k.endswith("_flips")},
                "experts": self.current.total_experts,
                "total_rank": self.current.total_rank,
            }
        )
        if len(self.history) > self.history_len:  # keep every second record, evenly spaced
            self.history_every *= 2
            self.history = [h for h in self.history if (h["step"] + 1) % self.history_every == 0]

    # -- the end -----------------------------------------------------------------------------
    def report(self) -> dict:
        """Final report (JSON-serialisable), stored as ``meta["diagnostics"]`` of ``allocation.json``.

        ``steps`` (last step + 1), ``start_step`` (0 unless resumed from a checkpoint
        without diagnostics), ``initial`` / ``final`` (``experts``, ``total_rank``,
        ``expert_margin``, ``rank_margin``), the four distances of the module doc,
        ``expert_flips`` / ``rank_flips`` (totals), ``last_expert_flip`` /
        ``last_rank_flip`` (step or None), ``tail_fraction``, ``tail_steps``,
        ``tail_expert_flips`` / ``tail_rank_flips``, ``unchanged``, ``converged``,
        ``initial_readout`` (module -> step-0 ranks of its kept experts) and ``history``
        (records every ``history_every`` steps: ``step``, distances, margins,
        ``*_flips_total``, ``experts``, ``total_rank``).
        """
        if not self.started:
            raise RuntimeError("SearchDiagnostics.report before start()")
        now, ref = self.current, self.initial
        tail = self.tail_steps()
        tail_e = sum(ev[1] for ev in self.events if ev[0] >= self.steps - tail)
        tail_r = sum(ev[2] for ev in self.events if ev[0] >= self.steps - tail)
        initial = ref.module_ranks()
        out = {
            "compared": COMPARED,
            "steps": self.steps,
            "start_step": self.start_step,
            "initial": _totals(ref),
            "final": _totals(now),
            **distance(now, ref),
            "expert_flips": self.flips_total[0],
            "rank_flips": self.flips_total[1],
            "last_expert_flip": self.last_flip[0],
            "last_rank_flip": self.last_flip[1],
            "tail_fraction": self.tail_fraction,
            "tail_steps": tail,
            "tail_expert_flips": tail_e,
            "tail_rank_flips": tail_r,
            "unchanged": initial == now.module_ranks(),
            "converged": tail_e + tail_r == 0,
            "initial_readout": dict(zip(self.names, initial, strict=True))
            if self.names is not None
            else initial,
            "history": [dict(h) for h in self.history],
        }
        return out

    # -- checkpoints -----------------------------------------------------------------------
    def state_dict(self) -> dict:
        if not self.started:
            return {}
        return {
            "initial": self.initial.to_state(),
            "current": self.current.to_state(),
            "start_step": self.start_step,
            "steps": self.steps,
            "flips_total": list(self.flips_total),
            "window_flips": list(self.window_flips),
            "window_index": self.window_index,
            "last_flip": list(self.last_flip),
            "events": [list(ev) for ev in self.events],
            "history": [dict(h) for h in self.history],
            "history_every": self.history_every,
        }

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        self.initial = Selection.from_state(state["initial"])
        self.current = Selection.from_state(state["current"])
        self.start_step, self.steps = int(state["start_step"]), int(state["steps"])
        self.flips_total = list(state["flips_total"])
        self.window_flips = list(state["window_flips"])
        self.window_index = int(state["window_index"])
        self.last_flip = list(state["last_flip"])
        self.events = [list(ev) for ev in state["events"]]
        self.history = [dict(h) for h in state["history"]]
        self.history_every = int(state["history_every"])


# -- what the user reads ------------------------------------------------------------------------
def _snr(report: dict, kind: str) -> str:
    """``median (mean m, s% of modules noise)``; reports written before the median was
    logged (``credit/<kind>_snr`` was then the mean) show the one value they have."""
    head = f"{report[f'credit/{kind}_snr']:.2f}"
    mean = report.get(f"credit/{kind}_snr_mean")
    noise = f"{_pct(report[f'credit/{kind}_noise_share'])} of modules noise"
    return f"{head} (mean {mean:.2f}, {noise})" if mean is not None else f"{head} ({noise})"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def report_warnings(report: dict) -> list[str]:
    """The warnings a report calls for: the search did not move / had not converged."""
    out = []
    if report["unchanged"]:
        out.append(
            "the search did not move: the final GSV read-out (before budget fitting) equals the "
            "read-out of the initial GSVs in every expert count and rank, so the allocation "
            "written is the seeded initial selection (fitted to the budget, if one is set)"
        )
    if not report["converged"]:
        n = report["tail_expert_flips"] + report["tail_rank_flips"]
        out.append(
            f"not converged: {n} argmax flips ({report['tail_expert_flips']} expert, "
            f"{report['tail_rank_flips']} rank) in the last {report['tail_fraction']:.0%} of "
            f"steps ({report['tail_steps']} of {report['steps']}): the read-out was still changing"
        )
    return out


def report_lines(report: dict, budget: dict | None = None) -> list[str]:
    """A short human report (printed at the end of the search), warnings last.

    With the credit meter's keys in ``report`` (``credit/*``) a line says how much of the
    credit was signal; ``budget`` (``{kind, value, spent, fit}``: the allocation's
    ``meta``) adds what the budget did."""
    i, f = report["initial"], report["final"]

    def last(step):
        return "never" if step is None else f"step {step}"

    lines = [
        f"search diagnostics after {report['steps']} steps ({report['compared']}):",
        f"  experts {i['experts']} -> {f['experts']}, total rank {i['total_rank']} -> "
        f"{f['total_rank']}",
        f"  changed since step 0: expert count of {_pct(report['experts_changed'])} of modules "
        f"(mean |change| {report['experts_abs_change']:.2f}), rank of "
        f"{_pct(report['ranks_changed'])} of kept experts "
        f"(mean |change| {report['ranks_abs_change']:.2f})",
        f"  argmax flips in the last {report['tail_fraction']:.0%} of steps "
        f"({report['tail_steps']}): {report['tail_expert_flips']} expert, "
        f"{report['tail_rank_flips']} rank; last flip: experts "
        f"{last(report['last_expert_flip'])}, ranks {last(report['last_rank_flip'])}",
    ]
    if "credit/expert_snr" in report:
        lines.append(
            f"  credit signal-to-noise (smoothed |credit| / its deviation, below 1: the sign is "
            f"noise), median over modules: experts {_snr(report, 'expert')}, "
            f"ranks {_snr(report, 'rank')}"
        )
    if budget is not None and budget.get("value") is not None:
        fit = budget.get("fit") or {}
        line = f"  budget {budget['kind']} {budget['value']:,}"
        if fit.get("mode") == "lagrangian":
            control = report.get("budget_control") or {}
            line += (
                f" inside the search: read-out spends {control.get('spent', 0):,.0f} "
                f"(price {control.get('price', control.get('lam', 0)):.3g}), trim removed "
                f"{fit.get('removed_expert_units', 0)} expert / {fit.get('removed_rank_units', 0)} "
                f"rank units, fill ({fit.get('fill')}) added {fit.get('added_expert_units', 0)} / "
                f"{fit.get('added_rank_units', 0)}"
            )
            if isinstance(fit.get("scaled"), dict):
                line += f", then grown in proportion from {fit['scaled']['before']:,}"
        else:
            line += (
                f" fitted after the search: removed {fit.get('removed_expert_units', 0)} expert / "
                f"{fit.get('removed_rank_units', 0)} rank units"
            )
        lines.append(line + f"; the allocation spends {budget['spent']:,}")
    lines.append(f"  converged: {'yes' if report['converged'] else 'no'}")
    return lines + [f"  WARNING: {w}" for w in report_warnings(report)]
