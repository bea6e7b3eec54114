"""AlphaLoRA (arXiv 2410.10054): expert counts from the heavy-tailed spectra of the weights.

Training-free. For each target module, the empirical spectral density (ESD) of its
pretrained weight ``W`` (``d_out x d_in``) is the set of eigenvalues of ``W^T W``,
i.e. the squared singular values (``torch.linalg.svdvals`` in fp32). Its tail
exponent is the Hill estimate (PL_Alpha_Hill)::

    lambda_0 >= lambda_1 >= ... >= lambda_{n-1}   (non-zero eigenvalues)
    alpha = 1 + k / sum_{i<k} ln(lambda_i / lambda_k)

with ``k = n // 2`` by default, the "xmin at the median" choice of
TempBalance/AlphaLoRA (the threshold ``lambda_k`` sits in the middle of the
spectrum, and the ``k`` eigenvalues above it form the tail). This is the classical
Hill estimator of the density exponent: if ``p(lambda) ~ lambda^-alpha`` above the
threshold, ``(alpha - 1)^-1`` is the mean log-excess over it. Eigenvalues at or
below ``1e-10 * lambda_max`` are treated as zero (numerical rank deficiency) and
dropped first. A layer's alpha is the mean over its target modules.

A larger alpha means a lighter tail, i.e. a less well-trained layer, which AlphaLoRA
gives more experts: ``count_l`` is proportional to ``alpha_l ** beta`` (beta 2.5),
apportioned to a total (default ``5 * L``, 160 for 32 layers; the count of one
module type summed over layers) with at least one expert per layer and largest-
remainder rounding so the total is exact (:func:`guilomo.baselines.scale.apportion`).
Every module of layer ``l`` gets ``count_l`` experts of rank ``rank``; routing is
top-2, or top-1 where a layer has a single expert.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from guilomo.allocation import Allocation, ModuleAllocation
from guilomo.baselines.scale import apportion
from guilomo.baselines.simple import layer_indices

ZERO_EIG = 1e-10


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
    modules: Mapping[str, nn.Module | Tensor], k: int | None = None
) -> dict[str, float]:
    """PL_Alpha_Hill of every module's weight (``nn.Linear`` or a weight tensor)."""
    return {n: hill_alpha(esd(w), k) for n, w in _weights(modules).items()}


def layer_alphas(
    modules: Mapping[str, nn.Module | Tensor], k: int | None = None
) -> dict[int, float]:
    """Mean PL_Alpha_Hill over the target modules of every decoder layer."""
    per_module = module_alphas(modules, k)
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
) -> Allocation:
    """AlphaLoRA allocation over the modules' names (counts per layer, uniform rank).

    ``modules`` maps names to ``nn.Linear`` (or weight tensors); with precomputed
    per-layer ``alphas`` it may map names to anything (e.g. shapes). ``total`` is the
    sum over layers of the per-layer count (default ``5 * layers``).
    """
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    layers = layer_indices(modules)
    if alphas is None:
        alphas = layer_alphas(modules, k)
    missing = sorted(set(layers.values()) - set(alphas))
    if missing:
        raise ValueError(f"no alpha for layer(s) {missing}")
    alphas = {layer: float(alphas[layer]) for layer in sorted(set(layers.values()))}
    counts = alpha_counts(alphas, total, beta)
    mods = {n: ModuleAllocation((rank,) * counts[layer]) for n, layer in layers.items()}
    meta = {
        "source": "baseline:alphalora",
        "beta": beta,
        "total": sum(counts.values()),
        "layer_alpha": {str(layer): a for layer, a in alphas.items()},
        "layer_experts": {str(layer): c for layer, c in counts.items()},
    }
    return Allocation(mods, top_k, meta)
