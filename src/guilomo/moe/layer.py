"""One LoRA-MoE linear layer: a frozen ``nn.Linear`` plus top-k routed LoRA experts.

    z = W_r x (fp32)   p = softmax(z + bias)   T = top-k(p), weights renormalised
    h = W0 x + sum_{i in T} w_i * s_i * B_i A_i dropout(x)        s_i = alpha / r_i

All experts of a module are concatenated: A is (R x d_in), B is (d_out x R) with
R = sum r_i, and ``expert_of_rank`` maps each of the R rank rows to its expert. The
production path (``impl="masked"``) scatters the top-k weights into a T x N gate,
expands it to T x R and computes ``((drop(x) A^T) * gate_R) B^T``: two GEMMs, no
Python loop over experts, no host sync. ``impl="loop"`` visits experts one by one
(gather / index_add, as MoLA does) and is kept as the correctness reference.

Subclasses (the search) add a router-logit bias and a per-rank gate through
:meth:`search_terms`. The layer stores its load-balancing loss of the last
training forward in ``self.aux``; padding tokens are excluded through the shared
:class:`RoutingContext` that the injection hooks fill with the attention mask.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from guilomo.moe.config import LoraMoEConfig


def expert_scales(config: LoraMoEConfig, ranks: Sequence[int]) -> list[float]:
    """The scale of each expert: ``alpha / r_i`` (``per_expert``), or ``alpha / r_last``
    for all of them (``last_expert``, the reference's bug)."""
    return [config.alpha / (ranks[-1] if config.scaling == "last_expert" else r) for r in ranks]


class RoutingContext:
    """State shared by the adapted layers of one model: the current token mask."""

    def __init__(self):
        self.token_mask: Tensor | None = None  # (batch, seq) attention mask of the forward

    def flat_mask(self, n_tokens: int, device) -> Tensor | None:
        m = self.token_mask
        if m is None or m.numel() != n_tokens:  # e.g. cached generation: no mask needed
            return None
        return m.reshape(-1).to(device=device, dtype=torch.bool)


class _Fp32Linear(torch.autograd.Function):
    """``F.linear(x.float(), w.float())`` that saves ``x`` in its own dtype.

    Plain autograd would keep the fp32 copy of a bf16 ``x`` (d_in floats per token,
    more than the whole masked adapter saves); the upcast is exact, so redoing it in
    the backward gives the same gradients.
    """

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor) -> Tensor:
        ctx.save_for_backward(x, w)
        return F.linear(x.float(), w.float())

    @staticmethod
    def backward(ctx, g: Tensor):
        x, w = ctx.saved_tensors
        gx = (g @ w.float()).to(x.dtype) if ctx.needs_input_grad[0] else None
        gw = (g.t() @ x.float()).to(w.dtype) if ctx.needs_input_grad[1] else None
        return gx, gw


class LoraMoELinear(nn.Module):
    """A frozen linear layer with ``len(ranks)`` LoRA experts of ranks ``ranks``."""

    def __init__(
        self,
        base: nn.Linear,
        ranks: Sequence[int],
        top_k: int,
        config: LoraMoEConfig | None = None,
        context: RoutingContext | None = None,
    ):
        super().__init__()
        config = config or LoraMoEConfig()
        ranks = [int(r) for r in ranks]
        if top_k > len(ranks):
            raise ValueError(f"top_k={top_k} > {len(ranks)} experts: lower top_k or add experts")
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.ranks, self.top_k, self.config = ranks, top_k, config
        self.context = context or RoutingContext()
        d_in, d_out, R = base.in_features, base.out_features, sum(ranks)
        dtype, device = base.weight.dtype, base.weight.device
        self.lora_A = nn.Parameter(torch.empty(R, d_in, dtype=dtype, device=device))
        self.lora_B = nn.Parameter(torch.empty(d_out, R, dtype=dtype, device=device))
        n = len(ranks)
        self.router = (
            nn.Parameter(torch.empty(n, d_in, dtype=torch.float32, device=device))
            if n > 1
            else None
        )
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        expert_of_rank = torch.repeat_interleave(torch.arange(n), torch.tensor(ranks))
        scale = expert_scales(config, ranks)
        rank_scale = torch.repeat_interleave(
            torch.tensor(scale, dtype=torch.float32), torch.tensor(ranks)
        )
        self.register_buffer("expert_of_rank", expert_of_rank.to(device), persistent=False)
        self.register_buffer("rank_scale", rank_scale.to(device), persistent=False)
        self.aux: Tensor | None = None
        self.reset_parameters()

    def _apply(self, fn, recurse=True):
        # ``.to(bfloat16)`` / ``.half()`` would round the per-rank scales alpha / r_i
        # (16/3 -> 5.34 in bf16); they are constants of the allocation: keep them fp32.
        keep = self._buffers.get("rank_scale")
        out = super()._apply(fn, recurse)
        new = self._buffers.get("rank_scale")
        if keep is not None and new is not None and new.dtype != keep.dtype:
            self._buffers["rank_scale"] = keep.to(new.device)
        return out

    # -- parameters ---------------------------------------------------------------------
    @property
    def num_experts(self) -> int:
        return len(self.ranks)

    def expert_slices(self) -> list[slice]:
        """Rows of ``lora_A`` (columns of ``lora_B``) that belong to each expert."""
        bounds = [0, *itertools.accumulate(self.ranks)]
        return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    @torch.no_grad()
    def reset_parameters(self) -> None:
        if self.config.init == "normal":
            nn.init.normal_(self.lora_A, std=0.02)
            nn.init.normal_(self.lora_B, std=0.02)
        else:
            for s in self.expert_slices():  # fan_in = d_in for every expert block
                nn.init.kaiming_uniform_(self.lora_A[s], a=math.sqrt(5))
            nn.init.zeros_(self.lora_B)
        if self.router is not None:
            nn.init.kaiming_uniform_(self.router, a=math.sqrt(5))

    # -- hooks for the search -----------------------------------------------------------
    def search_terms(self) -> tuple[Tensor | None, Tensor | None]:
        """(additive router-logit bias of length N, multiplicative gate of length R)."""
        return None, None

    def expert_probe(self, x2: Tensor | None = None) -> Tensor | None:
        """Weight (length N, or T x N given the flattened tokens ``x2``) added to every
        token's routing weights, or None.

        The search uses it to give experts it has masked out a small, trainable presence
        (the expert analogue of the soft rank mask); a plain LoRA-MoE has none.
        """
        return None

    # -- forward ------------------------------------------------------------------------
    def route(self, x2: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """fp32 routing of flattened tokens: (probs T x N, top-k ids T x k, weights T x k)."""
        T = x2.shape[0]
        if self.router is None:
            ones = x2.new_ones(T, 1, dtype=torch.float32)
            return ones, torch.zeros(T, 1, dtype=torch.long, device=x2.device), ones
        if x2.dtype == torch.float32 and self.router.dtype == torch.float32:
            logits = F.linear(x2, self.router)
        else:  # fp32 logits without keeping an fp32 copy of x for the backward
            logits = _Fp32Linear.apply(x2, self.router)
        if bias is not None:
            logits = logits + bias
        probs = logits.softmax(-1)
        top_w, top_i = probs.topk(self.top_k, dim=-1)
        return probs, top_i, top_w / top_w.sum(-1, keepdim=True)

    def forward(self, x: Tensor) -> Tensor:
        y = self.base(x)
        x2 = x.reshape(-1, x.shape[-1])
        bias, rank_gate = self.search_terms()
        probs, top_i, top_w = self.route(x2, bias)
        scale = self.rank_scale if rank_gate is None else self.rank_scale * rank_gate
        self.aux = None
        if self.training and self.router is not None:
            self.aux = self.balance_loss(
                probs, top_i, self.context.flat_mask(x2.shape[0], x.device)
            )
        probe = self.expert_probe(x2)
        if self.config.impl == "loop":
            if probe is not None:
                raise ValueError("an expert probe needs impl='masked' (every token visits it)")
            delta = self._delta_loop(x2, top_i, top_w, scale)
            return y + delta.reshape(y.shape).to(y.dtype)
        return self._add_masked(y, x2, top_i, top_w, scale, probe)

    def _add_masked(
        self,
        y: Tensor,
        x2: Tensor,
        top_i: Tensor,
        top_w: Tensor,
        scale: Tensor,
        probe: Tensor | None = None,
    ) -> Tensor:
        """``y + ((drop(x) A^T) * gate_R) B^T``, the final add fused into the second GEMM."""
        gate = top_w.new_zeros(x2.shape[0], self.num_experts).scatter(1, top_i, top_w)
        if probe is not None:
            gate = gate + probe
        gate_r = gate.index_select(1, self.expert_of_rank) * scale  # T x R, fp32
        h = self.dropout(x2) @ self.lora_A.t()
        y2 = y.reshape(-1, y.shape[-1])
        return torch.addmm(y2, h * gate_r.to(h.dtype), self.lora_B.t().to(y2.dtype)).reshape(
            y.shape
        )

    def _delta_loop(self, x2: Tensor, top_i: Tensor, top_w: Tensor, scale: Tensor) -> Tensor:
        out = x2.new_zeros(x2.shape[0], self.lora_B.shape[0])
        xd = self.dropout(x2)
        for e, s in enumerate(self.expert_slices()):
            tok, slot = torch.where(top_i == e)
            if tok.numel() == 0:
                continue
            h = xd[tok] @ self.lora_A[s].t()
            h = h * (top_w[tok, slot, None] * scale[s]).to(h.dtype)
            out = out.index_add(0, tok, h @ self.lora_B[:, s].t())
        return out

    def balance_loss(self, probs: Tensor, top_i: Tensor, mask: Tensor | None) -> Tensor:
        """Switch-style load balancing: N * sum_e f_e * P_e over non-padding tokens (fp32).

        f_e is the fraction of top-k assignments that went to expert e, P_e the mean
        router probability of expert e.
        """
        n = self.num_experts
        if mask is not None:
            probs, top_i = probs[mask], top_i[mask]
        if probs.shape[0] == 0:
            return probs.new_zeros(())
        counts = torch.zeros(n, device=probs.device).index_add_(
            0, top_i.reshape(-1), torch.ones(top_i.numel(), device=probs.device)
        )
        f = counts / top_i.numel()
        return n * (f * probs.float().mean(0)).sum()

    def extra_repr(self) -> str:
        return f"experts={self.num_experts}, ranks={self.ranks}, top_k={self.top_k}"
