"""Settings of the LoRA-MoE adapter, validated on creation (peft-style config dataclass).

:meth:`LoraMoEConfig.from_config` builds it from the run's ``adapter`` config, each
error a :class:`~guilomo.utils.checks.ConfigError` naming the ``adapter.*`` key.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from guilomo.utils.checks import ConfigError, check_fields

SCALINGS = ("per_expert", "last_expert")
IMPLS = ("masked", "loop")
INITS = ("kaiming", "normal")
REDUCTIONS = ("mean", "sum")


@dataclass
class LoraMoEConfig:
    """How every adapted module computes its LoRA-MoE delta.

    - ``alpha``: LoRA alpha; expert ``i`` is scaled by ``alpha / r_i``.
    - ``scaling``: ``per_expert`` (correct) or ``last_expert`` (the reference's bug:
      every expert of a module uses ``alpha / r_last``).
    - ``impl``: ``masked`` (concatenated experts, two GEMMs; production) or ``loop``
      (one expert at a time; the correctness reference).
    - ``init``: ``kaiming`` (A Kaiming-uniform, B zero) or ``normal`` (N(0, 0.02) for
      both A and B, the reference's search-time init).
    - ``aux_coef``: weight of the load-balancing loss; ``aux_reduction`` combines the
      per-module losses (``mean`` or ``sum``).
    """

    alpha: float = 16.0
    dropout: float = 0.05
    scaling: str = "per_expert"
    impl: str = "masked"
    init: str = "kaiming"
    aux_coef: float = 0.001
    aux_reduction: str = "mean"

    def __post_init__(self):
        _choice("scaling", self.scaling, SCALINGS)
        _choice("impl", self.impl, IMPLS)
        _choice("init", self.init, INITS)
        _choice("aux_reduction", self.aux_reduction, REDUCTIONS)
        for name in ("alpha", "dropout", "aux_coef"):  # never NaN, Infinity, a string or a bool
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number, got {v!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha}")
        if self.aux_coef < 0:
            raise ValueError(f"aux_coef must be >= 0, got {self.aux_coef}")

    @classmethod
    def from_config(cls, spec: Mapping, key: str = "adapter") -> LoraMoEConfig:
        """The config from the run's ``adapter`` mapping: types first, then the ranges."""
        check_fields(key, cls, dict(spec))
        try:
            return cls(**spec)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{key}: {e}; fix the {key}.* value") from e

    def to_dict(self) -> dict:
        return asdict(self)


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}='{value}' is not one of {list(allowed)}")
