"""AlphaLoRA (arXiv 2410.10054): expert counts from the heavy-tailed spectra of the weights.

Training-free. For each target module, the empirical spectral density (ESD) of its
pretrained weight ``W`` (``d_out x d_in``) is the set of eigenvalues of ``W^T W``,
i.e. the squared singular values (``torch.linalg.svdvals`` in fp32). Its tail
exponent alpha is a Hill / maximum-likelihood power-law fit above a threshold
``xmin``; with the ``n`` eigenvalues ``lambda_j >= xmin``::

    alpha = 1 + n / sum_j ln(lambda_j / xmin)

The threshold is chosen two ways (``threshold=``):

- ``"ks"`` (default), as the authors' released code does it (WeightWatcher-style):
  with the eigenvalues ascending ``lambda_0 <= ... <= lambda_{N-1}``, every
  ``lambda_i`` (``i < N - 1``) is a candidate xmin, fitted on the ``n = N - i``
  eigenvalues from ``i`` on, and scored by the Kolmogorov-Smirnov distance between
  the fitted power law's CDF and the empirical one::

      D_i = max_{j >= i} | 1 - (lambda_j / lambda_i)^(1 - alpha_i) - (j - i) / n |

  The alpha of the smallest ``D_i`` wins (the first on ties). Candidates are bounded
  by a histogram of ``log10(lambda)`` (100 bins over its range): with ``e`` the left
  edge of the fullest bin (the first on ties) in linear units, candidates above
  ``1.5 e`` are not tried, nor candidates below ``log10(0.95 e)``. That lower bound
  compares a log with an eigenvalue, as the reference code does (so in practice there
  is none); we keep it so the rule is the authors'. A candidate whose fit has
  ``alpha <= 1`` keeps ``D = 1``; when no candidate is tried the result is 0, as in
  the reference.
- ``"median"``: the threshold is the median eigenvalue, ``xmin = lambda_k`` of the
  descending spectrum with ``k = n // 2`` (TempBalance's "xmin at the median"), via
  :func:`hill_alpha` (``k`` can be set).

Eigenvalues at or below ``1e-10 * lambda_max`` are treated as zero (numerical rank
deficiency) and dropped first (the reference keeps them; an exact zero would make its
log-histogram undefined). The fit runs in float64. A layer's alpha is the mean over
its target modules. On SmolLM2-135M the two thresholds give different exponents and
counts: the median rule is not the authors' method.

A larger alpha means a lighter tail, i.e. a less well-trained layer, which AlphaLoRA
gives more experts: ``count_l`` is proportional to ``alpha_l ** beta`` (beta 2.5),
apportioned to a total (default ``5 * L``, 160 for 32 layers; the count of one
module type summed over layers) with at least one expert per layer and largest-
remainder rounding so the total is exact (:func:`guilomo.budget.scale.apportion`).
Every module of layer ``l`` gets ``count_l`` experts of rank ``rank``; routing is
top-2, or top-1 where a layer has a single expert.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from guilomo.allocation import Allocation, ModuleAllocation
from guilomo.baselines.simple import layer_indices
from guilomo.budget.scale import apportion

ZERO_EIG = 1e-10
THRESHOLDS = ("ks", "median")
HIST_BINS = 100


def esd(weight: Tensor) -> Tensor:
    """Eigenvalues of ``W^T W`` (squared singular values of ``W``), fp32, descending."""
    if weight.dim() != 2:
        raise ValueError(f"expected a 2-D weight matrix, got shape {tuple(weight.shape)}")
    s = torch.linalg.svdvals(weight.detach().to(device="cpu", dtype=torch.float32))
    return (s * s).sort(descending=True).values


def hill_alpha(eigenvalues: Tensor, k: int | None = None) -> float:
    """PL_Alpha_Hill of a spectrum: ``1 + k / sum_{i<k} ln(lambda_i / lambda_k)``.

    ``eigenvalues`` in any order; values ``<= 1e-10 * max`` are dropped; ``k``
    defaults to half the remaining count.
    """
    lam = torch.as_tensor(eigenvalues, dtype=torch.float64).flatten().sort(descending=True).values
    if lam.numel() == 0 or not torch.isfinite(lam).all() or lam[0] <= 0:
        raise ValueError("hill_alpha needs a finite spectrum with a positive eigenvalue")
    lam = lam[lam > ZERO_EIG * lam[0]]
    n = lam.numel()
    k = n // 2 if k is None else int(k)
    if not 1 <= k < n:
        raise ValueError(f"k must be in [1, {n - 1}] for {n} non-zero eigenvalues, got {k}")
    logs = torch.log(lam[:k] / lam[k]).sum()
    if logs <= 0:
        raise ValueError("the top half of the spectrum is flat (all equal): no tail to fit")
    return float(1.0 + k / logs)


def _nonzero_ascending(eigenvalues) -> Tensor:
    lam = torch.as_tensor(eigenvalues, dtype=torch.float64).flatten().sort().values
    if lam.numel() == 0 or not torch.isfinite(lam).all() or lam[-1] <= 0:
        raise ValueError("an alpha fit needs a finite spectrum with a positive eigenvalue")
    return lam[lam > ZERO_EIG * lam[-1]]


def ks_alpha(eigenvalues, bins: int = HIST_BINS, chunk: int = 256) -> float:
    """Power-law alpha at the KS-minimising threshold (the authors' rule, module docstring)."""
    lam = _nonzero_ascending(eigenvalues)
    n_all = lam.numel()
    if n_all < 2:
        raise ValueError(f"a KS fit needs at least 2 non-zero eigenvalues, got {n_all}")
    logs = lam.log()
    log10 = lam.log10()
    counts = torch.histc(log10, bins=bins, min=float(log10[0]), max=float(log10[-1]))
    edges = torch.linspace(float(log10[0]), float(log10[-1]), bins + 1, dtype=torch.float64)
    peak = float(10 ** edges[int(torch.argmax(counts))])
    lower, upper = math.log10(0.95 * peak), 1.5 * peak
    # candidates i < N - 1, ascending: skip those below `lower`, stop above `upper`
    cand = torch.arange(n_all - 1)
    cand = cand[lam[:-1] >= lower]
    cand = cand[: int((lam[cand] <= upper).sum())] if cand.numel() else cand
    alphas = torch.zeros(n_all - 1, dtype=torch.float64)
    ds = torch.ones(n_all - 1, dtype=torch.float64)
    if cand.numel():
        tail_sum = logs.flip(0).cumsum(0).flip(0)  # tail_sum[i] = sum_{j >= i} ln lambda_j
        n = (n_all - cand).double()
        alphas[cand] = 1 + n / (tail_sum[cand] - n * logs[cand])
        j = torch.arange(n_all)
        for start in range(0, cand.numel(), chunk):  # D_i for a block of candidates at once
            i = cand[start : start + chunk]
            a, ni = alphas[i, None], n[start : start + chunk, None]
            fit = 1 - (lam[None, :] / lam[i, None]) ** (1 - a)  # fitted CDF at lambda_j
            gap = (fit - (j[None, :] - i[:, None]) / ni).abs()
            gap = torch.where(j[None, :] >= i[:, None], gap, torch.zeros_like(gap))
            d = gap.amax(1)
            ok = a[:, 0] > 1
            ds[i[ok]] = d[ok]
    return float(alphas[int(torch.argmin(ds))])


def spectrum_alpha(eigenvalues, threshold: str = "ks", k: int | None = None) -> float:
    """Tail exponent of a spectrum with the ``ks`` (default) or ``median`` threshold."""
    if threshold not in THRESHOLDS:
        raise ValueError(f"alpha threshold '{threshold}' is not one of {list(THRESHOLDS)}")
    if threshold == "ks":
        if k is not None:
            raise ValueError("k (the tail size) applies to threshold='median' only")
        return ks_alpha(eigenvalues)
    return hill_alpha(eigenvalues, k)


def _weights(modules: Mapping[str, nn.Module | Tensor]) -> dict[str, Tensor]:
    out = {}
    for name, m in modules.items():
        w = m if isinstance(m, Tensor) else getattr(m, "weight", None)
        if not isinstance(w, Tensor):
            raise TypeError(
                f"AlphaLoRA needs the pretrained weights: '{name}' is {type(m).__name__}; pass "
                "{name: nn.Linear} (find_targets) or weight tensors, not shapes"
            )
        out[name] = w
    return out


def module_alphas(
    modules: Mapping[str, nn.Module | Tensor], k: int | None = None, threshold: str = "ks"
) -> dict[str, float]:
    """Tail exponent of every module's weight (``nn.Linear`` or a weight tensor)."""
    return {n: spectrum_alpha(esd(w), threshold, k) for n, w in _weights(modules).items()}


def layer_alphas(
    modules: Mapping[str, nn.Module | Tensor], k: int | None = None, threshold: str = "ks"
) -> dict[int, float]:
    """Mean tail exponent over the target modules of every decoder layer."""
    per_module = module_alphas(modules, k, threshold)
    layers = layer_indices(per_module)
    sums: dict[int, list[float]] = {}
    for n, a in per_module.items():
        sums.setdefault(layers[n], []).append(a)
    return {layer: sum(v) / len(v) for layer, v in sorted(sums.items())}


def alpha_counts(
    alphas: Mapping[int, float], total: int | None = None, beta: float = 2.5, minimum: int = 1
) -> dict[int, int]:
    """Experts per layer proportional to ``alpha ** beta``, summing exactly to ``total``
    (default ``5 * number of layers``), each at least ``minimum``."""
    layers = sorted(alphas)
    if not layers:
        raise ValueError("alpha_counts needs at least one layer")
    total = 5 * len(layers) if total is None else int(total)
    counts = apportion([float(alphas[layer]) ** beta for layer in layers], total, minimum)
    return dict(zip(layers, counts, strict=True))


def alphalora(
    modules: Mapping[str, nn.Module | Tensor | tuple[int, int]],
    total: int | None = None,
    beta: float = 2.5,
    rank: int = 8,
    top_k: int = 2,
    alphas: Mapping[int, float] | None = None,
    k: int | None = None,
    threshold: str = "ks",
) -> Allocation:
    """AlphaLoRA allocation over the modules' names (counts per layer, uniform rank).

    ``modules`` maps names to ``nn.Linear`` (or weight tensors); with precomputed
    per-layer ``alphas`` it may map names to anything (e.g. shapes). ``total`` is the
    sum over layers of the per-layer count (default ``5 * layers``); ``threshold`` is
    ``"ks"`` (the authors' rule, default) or ``"median"`` (``k`` sets its tail size).
    """
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    layers = layer_indices(modules)
    if alphas is None:
        alphas = layer_alphas(modules, k, threshold)
    missing = sorted(set(layers.values()) - set(alphas))
    if missing:
        raise ValueError(f"no alpha for layer(s) {missing}")
    alphas = {layer: float(alphas[layer]) for layer in sorted(set(layers.values()))}
    counts = alpha_counts(alphas, total, beta)
    mods = {n: ModuleAllocation((rank,) * counts[layer]) for n, layer in layers.items()}
    meta = {
        "source": "baseline:alphalora",
        "beta": beta,
        "threshold": threshold,
        "total": sum(counts.values()),
        "layer_alpha": {str(layer): a for layer, a in alphas.items()},
        "layer_experts": {str(layer): c for layer, c in counts.items()},
    }
    return Allocation(mods, top_k, meta)
