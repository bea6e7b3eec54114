"""Settings of the GSV search (the ``search`` config group), validated on creation."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from guilomo.search.architect import ORDERS, VIRTUAL_STEPS
from guilomo.search.gsv import CREDITS, MIN_EXPERTS, RANK_FLOORS

# the search layer's choices (guilomo.search.layer checks them too)
WARMUP_PREFIXES = ("current", "full", "random")
STARTS = ("random", "uniform")
PROBES = ("routed", "constant")
GRANULARITIES = ("module", "layer")
EXPERT_SIGNALS = ("logits", "output")
VAL_SOURCES = ("heldout", "alternate")
BUDGET_MODES = ("lagrangian", "posthoc")
BUDGET_FILLS = ("spend", "needed")
OUTER_SCHEDULES = ("linear", "constant")


@dataclass
class InnerOptim:
    """AdamW on Theta = {A, B, lambda, routers}; warm-up then linear decay to 0.

    The warm-up is ``min(warmup_steps, max_warmup_fraction * total_steps)`` so short
    runs are not all warm-up.
    """

    lr: float = 3e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 100
    max_warmup_fraction: float = 0.1
    grad_clip: float | None = 1.0

    def warmup(self, total_steps: int) -> int:
        return int(min(self.warmup_steps, self.max_warmup_fraction * total_steps))


@dataclass
class OuterOptim:
    """Adam on the GSVs (the reference: lr 3e-3 constant, betas (0.5, 0.999), no weight decay).

    ``schedule="linear"`` decays the learning rate linearly from ``lr`` at step 0 to 0 at
    the last real step, so the read-out settles; it is a function of the step alone
    (nothing to checkpoint). ``constant`` is the reference.
    """

    lr: float = 2e-2
    betas: tuple[float, float] = (0.5, 0.999)
    weight_decay: float = 0.0
    schedule: str = "linear"

    def __post_init__(self):
        if self.schedule not in OUTER_SCHEDULES:
            raise ValueError(
                f"search.outer.schedule='{self.schedule}' is not one of {list(OUTER_SCHEDULES)}"
            )

    def lr_at(self, step: int, total_steps: int) -> float:
        """Learning rate of the outer step made at real step ``step`` (0-based) of ``total_steps``."""
        if self.schedule == "constant":
            return self.lr
        return self.lr * max(0.0, 1.0 - step / max(1, total_steps))


@dataclass
class SearchSettings:
    """How the search runs; see ``conf/search/default.yaml`` for each field."""

    n_max: int = 8
    r_max: int = 8
    top_k: int = 2
    granularity: str = "module"
    rank_mask: str = "soft"
    expert_signal: str = "output"  # output: gate on the experts | logits (reference)
    expert_credit: str = "neighbour"  # straight-through rule: neighbour | reference
    rank_credit: str = "neighbour"
    init: str | None = None  # A/B init during the search; None: the adapter's init
    order: str = "first"
    virtual_step: str = "sgd"
    val_source: str = "heldout"
    warmup_outer_steps: int = 0
    warmup_outer_fraction: float = 0.1  # warm-up = max(steps, fraction x real steps)
    warmup_prefix: str = "full"  # what the inner weights train under during the warm-up
    start: str = "random"  # initial GSVs: random (reference softmax(randn)) | uniform
    start_experts: int | None = None  # uniform start: experts per module (None: n_max // 2)
    start_rank: int | None = None  # uniform start: rank of every expert (None: r_max // 2)
    init_seed: int | None = None  # seed of the GSV init (None: the run's seed)
    budget_mode: str = "lagrangian"  # with a budget: lagrangian (inside the search) | posthoc
    budget_fill: str = "spend"  # after the search: spend (needed, then grown) | needed
    budget_lr: float = 0.3  # dual ascent step of the price of capacity
    budget_price: float = 1.0  # initial price (1: one unit costs a typical credit)
    budget_gain: float = 0.0  # proportional gain on the log price (0: dual ascent alone)
    credit_ema: float = 0.9  # EMA factor of the credit meter (AdaLoRA's beta)
    smooth_credit: bool = True  # the outer optimiser steps on the smoothed credit
    parsimony_expert: float = 0.5  # moves judged pessimistically by this many deviations
    parsimony_rank: float = 1.0
    probe: str = "routed"  # weight of a dropped expert: routed (router prob.) | constant (1)
    outer_every: int = 1
    min_experts: int = MIN_EXPERTS  # budget fitting keeps >= this many experts (1: hard floor)
    log_modules_every: int = 50
    heatmap: bool = True
    outer_dropout: bool = False  # adapter dropout in the outer step's passes (True: reference)
    inner: InnerOptim = field(default_factory=InnerOptim)
    outer: OuterOptim = field(default_factory=OuterOptim)

    def __post_init__(self):
        if isinstance(self.inner, dict):
            self.inner = InnerOptim(**self.inner)
        if isinstance(self.outer, dict):
            self.outer = OuterOptim(**self.outer)
        self.inner.betas = tuple(self.inner.betas)
        self.outer.betas = tuple(self.outer.betas)
        for name, allowed in (
            ("granularity", GRANULARITIES),
            ("rank_mask", tuple(RANK_FLOORS)),
            ("order", ORDERS),
            ("virtual_step", VIRTUAL_STEPS),
            ("val_source", VAL_SOURCES),
            ("expert_signal", EXPERT_SIGNALS),
            ("expert_credit", CREDITS),
            ("rank_credit", CREDITS),
            ("warmup_prefix", WARMUP_PREFIXES),
            ("start", STARTS),
            ("budget_mode", BUDGET_MODES),
            ("probe", PROBES),
            ("budget_fill", BUDGET_FILLS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"search.{name}='{getattr(self, name)}' is not one of {list(allowed)}"
                )
        if self.init is not None and self.init not in ("kaiming", "normal"):
            raise ValueError(f"search.init='{self.init}' is not one of ['kaiming', 'normal', null]")
        if self.n_max < 2 or self.r_max < 1:
            raise ValueError(
                f"search needs n_max >= 2 and r_max >= 1, got {self.n_max}, {self.r_max}"
            )
        if not 1 <= self.top_k <= self.n_max:
            raise ValueError(f"search.top_k={self.top_k} must be in [1, n_max={self.n_max}]")
        if self.outer_every < 1 or self.warmup_outer_steps < 0:
            raise ValueError("search.outer_every must be >= 1 and search.warmup_outer_steps >= 0")
        if not 0.0 <= self.warmup_outer_fraction < 1.0:
            raise ValueError(
                f"search.warmup_outer_fraction={self.warmup_outer_fraction} must be in [0, 1)"
            )
        if self.parsimony_expert < 0 or self.parsimony_rank < 0:
            raise ValueError("search.parsimony_expert and search.parsimony_rank must be >= 0")
        if (self.parsimony_expert or self.parsimony_rank) and not self.smooth_credit:
            raise ValueError(
                "search.parsimony_* needs the smoothed credit: set search.smooth_credit=true "
                "or search.parsimony_expert=0 search.parsimony_rank=0"
            )
        if not 0.0 <= self.credit_ema < 1.0:
            raise ValueError(f"search.credit_ema={self.credit_ema} must be in [0, 1)")
        if self.budget_lr <= 0 or self.budget_price <= 0:
            raise ValueError("search.budget_lr and search.budget_price must be > 0")
        if self.budget_gain < 0:
            raise ValueError(
                f"search.budget_gain={self.budget_gain} must be >= 0 (0: the dual ascent alone)"
            )
        for key, top in (("start_experts", self.n_max), ("start_rank", self.r_max)):
            value = getattr(self, key)
            low = MIN_EXPERTS if key == "start_experts" else 1
            if value is not None and not low <= value <= top:
                raise ValueError(f"search.{key}={value} must be in [{low}, {top}] or null")
        if not 1 <= self.min_experts <= self.n_max:
            raise ValueError(f"search.min_experts={self.min_experts} must be in [1, n_max]")

    @classmethod
    def from_dict(cls, data: dict) -> SearchSettings:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown search settings {unknown}; known: {sorted(known)}")
        return cls(**data)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def parsimony(self) -> tuple[float, float]:
        """(expert, rank) parsimony of the smoothed credit and of budget filling."""
        return (self.parsimony_expert, self.parsimony_rank)

    def warmup(self, total_steps: int | None = None) -> int:
        """Real steps before the first GSV step: ``warmup_outer_steps``, or the fraction of
        ``total_steps`` if that is more."""
        by_fraction = int(self.warmup_outer_fraction * total_steps) if total_steps else 0
        return max(self.warmup_outer_steps, by_fraction)

    def outer_due(self, step: int, total_steps: int | None = None) -> bool:
        """Whether real step ``step`` (0-based) starts with an outer (GSV) step."""
        warmup = self.warmup(total_steps)
        return step >= warmup and (step - warmup) % self.outer_every == 0
