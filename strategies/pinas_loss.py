"""Pi-NAS's objective: how keys pair with queries, InfoNCE against the queue, Eq. 1 alone, and the collapse monitor.

Reference: Jiefeng Peng, Jiqi Zhang, Changlin Li, Guangrun Wang, Xiaodan Liang, Liang Lin, "Pi-NAS: Improving
Neural Architecture Search by Reducing Supernet Training Consistency Shift", ICCV 2021, Eq. 1-4 and Table 7.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Mapping

import torch
from torch.nn import functional as F

__all__ = ['key_plan', 'info_nce', 'consistency_loss', 'embedding_spread', 'CollapseMonitor']

_logger = logging.getLogger(__name__)


def key_plan(num_views: int, cross_path: bool) -> tuple[int, int, bool]:
    """Which views the teacher embeds and how keys pair with queries.

    The student embeds view 0 through ``P_i`` (``q_i``) and view 1 through ``P_j`` (``q_j``). Returns
    ``(view of k_i, view of k_j, crossed)``, where ``k_i`` is the teacher's key through ``P_i``; ``crossed`` means
    ``q_i`` pairs with ``k_j`` and ``q_j`` with ``k_i`` (Pi-NAS), else each query pairs with its own path's key.
    Every positive comes from a view other than its query's: with 4 views from views 2 and 3 (the released code),
    with 2 views from the other student view.
    """
    if num_views == 4:
        return 2, 3, cross_path
    if num_views != 2:
        raise ValueError(f'Pi-NAS uses 2 or 4 views per image, got {num_views}.')
    return (0, 1, True) if cross_path else (1, 0, False)


class _LogSumExpOverBank(torch.autograd.Function):
    """``logsumexp(query @ bank.T)`` per row, and the row maximum, in one pass over ``[N, K]`` logits.

    Autograd's composition keeps the logits and recomputes their exponentials in the backward pass; here the
    forward exponentiates in place and keeps the (unnormalised) result, so the backward is one matrix product:
    ``d lse / d query = softmax @ bank``. At the paper's 49152 keys this is most of the queue's cost on a CPU.

    A bank stored in lower precision than the queries (a bfloat16 queue) keeps the ``[N, K]`` tensor in the bank's
    precision: the forward product, the shift by the row maximum, the exponentials and the query-gradient product
    run in it, while the row sums, the log-sum-exp and the query gradient are in the queries' precision. A bank
    gradient, if one is needed, is computed in the queries' precision and returned in the bank's.
    """

    @staticmethod
    def forward(ctx, query: torch.Tensor, bank: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weights = query.to(bank.dtype) @ bank.t()
        top = weights.amax(1, keepdim=True)
        total = weights.sub_(top).exp_().sum(1, keepdim=True, dtype=query.dtype)
        ctx.save_for_backward(weights, total, query, bank)
        top = top.squeeze(1).to(query.dtype)
        lse = top + total.squeeze(1).log()
        ctx.mark_non_differentiable(top)
        return lse, top

    @staticmethod
    def backward(ctx, grad_lse: torch.Tensor, grad_top: torch.Tensor) -> tuple:
        weights, total, query, bank = ctx.saved_tensors
        scale = grad_lse.unsqueeze(1) / total
        grad_query = (weights @ bank).to(query.dtype) * scale if ctx.needs_input_grad[0] else None
        grad_bank = ((weights.to(query.dtype) * scale).t() @ query).to(bank.dtype) if ctx.needs_input_grad[1] else None
        return grad_query, grad_bank


def info_nce(query: torch.Tensor, key: torch.Tensor, negatives: torch.Tensor,
             temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """InfoNCE of unit queries against their positive keys and a bank of negatives (Pi-NAS Eq. 4, one term).

    Returns the mean loss ``-log(exp(q.k/t) / (exp(q.k/t) + sum_n exp(q.n/t)))`` and the fraction of queries whose
    positive beats every negative. Both terms of a step go through one call (queries and keys stacked), so the
    queue is read by a single matrix product; the temperature scales the queries before it, the negatives'
    log-sum-exp is fused (:class:`_LogSumExpOverBank`) and the positive is combined by ``logaddexp``, so no
    ``[N, 1 + K]`` logits tensor is built and the backward pass reads the queue once more. A bfloat16 ``negatives``
    bank runs the products with it and the exponentials in bfloat16 (sums and results in float32); the positive
    stays in float32.
    """
    scaled = query / temperature
    positive = (scaled * key).sum(1)
    negative, hardest = _LogSumExpOverBank.apply(scaled, negatives)
    loss = torch.logaddexp(positive, negative) - positive
    with torch.no_grad():
        accuracy = (positive > hardest).float().mean()
    return loss.mean(), accuracy


def consistency_loss(query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """Pi-NAS Eq. 1 alone (no negatives): ``2 - 2 q.k`` for unit vectors, i.e. their squared distance."""
    return (2.0 - 2.0 * (query * key).sum(1)).mean()


def embedding_spread(embeddings: torch.Tensor) -> float:
    """``sqrt(total variance)`` of unit vectors across the batch: near 1 when spread, 0 when all are equal."""
    unit = F.normalize(embeddings.detach().float(), dim=1)
    return float(unit.var(0, unbiased=False).sum().clamp(min=0).sqrt())


class CollapseMonitor:
    """Flags a collapse when the embedding spread stays below ``threshold`` for ``patience`` consecutive steps.

    A collapsed supernet maps every image to (nearly) the same vector; Pi-NAS without negatives does so (Table 7:
    "collision"). The spread (:func:`embedding_spread`) of a healthy contrastive supernet stays well above 0.1.
    """

    def __init__(self, threshold: float = 0.05, patience: int = 20):
        if threshold < 0 or patience < 1:
            raise ValueError('collapse_threshold must be >= 0 and collapse_patience >= 1, got '
                             f'{threshold}, {patience}.')
        self.threshold, self.patience = float(threshold), int(patience)
        self.below = 0
        self.collapsed_at: int | None = None

    @property
    def collapsed(self) -> bool:
        return self.collapsed_at is not None

    def update(self, spread: float, step: int) -> bool:
        """Record one step's spread; True exactly when this step confirms a collapse."""
        self.below = self.below + 1 if (math.isnan(spread) or spread < self.threshold) else 0
        if self.below >= self.patience and self.collapsed_at is None:
            self.collapsed_at = int(step)
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        return {'below': self.below, 'collapsed_at': -1 if self.collapsed_at is None else self.collapsed_at}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.below = int(state['below'])
        self.collapsed_at = None if int(state['collapsed_at']) < 0 else int(state['collapsed_at'])
