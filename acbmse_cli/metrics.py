"""ACB-MSE as a ``torchmetrics`` metric, for validation loops: :class:`ACBMSEMetric`.

Its states are the per-class statistics of :func:`acbmse_cli.stats.class_stats` (int64 counts and
float64 sums of squared error), declared with ``dist_reduce_fx="sum"``: torchmetrics adds them
over the DDP ranks by itself, and the value follows from the sums with
:func:`acbmse_cli.stats.balanced_loss`, the loss's own formula.

Needs the optional extra: ``pip install 'acbmse-cli[metrics]'``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

try:
    from torchmetrics import Metric
except ImportError:
    raise ImportError(
        "acbmse_cli.metrics needs torchmetrics, which is not installed: pip install 'acbmse-cli[metrics]'"
    ) from None

from acbmse_cli.loss import _class_options
from acbmse_cli.stats import ClassStats, balanced_loss, class_stats, count_members

__all__ = ["ACBMSEMetric"]


class ACBMSEMetric(Metric):
    r"""The ACB-MSE of everything seen since the last :meth:`reset`, pooled over all updates.

    Every :meth:`update` adds its per-class counts and sums of squared error to the states, so
    :meth:`compute` gives the ACB-MSE of all batches exactly as if they had been concatenated
    (not the mean of the batches' values).  Under DDP torchmetrics sums the states over the
    ranks when :meth:`compute` is called: every rank gets the value of the whole validation
    set, whatever the number of batches and of hits on each rank.  Nothing in :meth:`update` is
    read back to the host.

    Each batch is summed in the loss's accumulation dtype (float32, or float64 for float64
    inputs) and added to float64 states.

    Args:
        hit_weight: A, weight of the hit class.
        nonhit_weight: B, weight of the non-hit class.
        hit_threshold: an element is a hit when ``|target| > hit_threshold``.
        class_weights: for labelled classes, the K weights :math:`w_c`; then every
            :meth:`update` needs ``labels``.
        kwargs: torchmetrics' own options (``sync_on_compute``, ``process_group``, ...).

    Example::

        >>> import torch
        >>> from acbmse_cli.metrics import ACBMSEMetric
        >>> metric = ACBMSEMetric(hit_weight=2.0)
        >>> metric.update(torch.zeros(4), torch.tensor([0.0, 0.0, 0.0, 1.0]))
        >>> metric.update(torch.ones(2), torch.tensor([0.0, 3.0]))
        >>> metric.compute()  # 2 * (1 + 4) / 2 + (0 + 0 + 0 + 1) / 4
        tensor(5.2500, dtype=torch.float64)
        >>> metric.compute_classes()["count"]
        tensor([4, 2])
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    count: Tensor
    sse: Tensor
    elements: Tensor

    def __init__(
        self,
        *,
        hit_weight: float = 1.0,
        nonhit_weight: float = 1.0,
        hit_threshold: float = 0.0,
        class_weights: Sequence[float] | Tensor | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.labelled = class_weights is not None
        self.weights, self.hit_threshold = _class_options(
            hit_weight, nonhit_weight, hit_threshold, class_weights, labelled=self.labelled
        )
        classes = len(self.weights)
        self.add_state("count", default=torch.zeros(classes, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("sse", default=torch.zeros(classes, dtype=torch.float64), dist_reduce_fx="sum")
        # elements kept by the masks: a label outside [0, K) is counted in no class, and shows as NaN
        self.add_state("elements", default=torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(
        self, preds: Tensor, target: Tensor, labels: Tensor | None = None, mask: Tensor | None = None
    ) -> None:
        """Add a batch: ``labels`` (with ``class_weights``) its classes, ``mask`` the elements to keep.

        Shape:
            - Preds: :math:`(*)`, any shape.
            - Target, labels, mask: same shape as the predictions.
        """
        if self.labelled and labels is None:
            raise ValueError("this metric has class_weights: update needs labels")
        if not self.labelled and labels is not None:
            raise ValueError("labels needs class_weights: construct ACBMSEMetric(class_weights=...)")
        stats = class_stats(
            preds.detach(),
            target.detach(),
            hit_threshold=self.hit_threshold,
            labels=labels,
            num_classes=len(self.weights) if self.labelled else None,
            mask=mask,
            host_sync=False,
        )
        self.count += stats.count[0]
        self.sse += stats.sse[0]
        self.elements += target.numel() if mask is None else count_members(mask.reshape(1, -1))[0]

    def _stats(self) -> ClassStats:
        return ClassStats(count=self.count.unsqueeze(0), sse=self.sse.unsqueeze(0))

    def compute(self) -> Tensor:
        """The ACB-MSE of every update since the last reset, a 0-d float64 tensor (0 for no data)."""
        stats = self._stats()
        value = balanced_loss(stats, self.weights)[0]
        complete = stats.count.sum() == self.elements
        return torch.where(complete, value, math.nan)

    def compute_classes(self) -> dict[str, Tensor]:
        """Every class's ``count`` (int64) and ``mse`` (float64, NaN for an empty class), shape ``(K,)``.

        In class order: non-hit then hit, or the labels' classes.  Synchronised over the ranks like
        :meth:`compute`.
        """
        with self.sync_context(
            dist_sync_fn=self.dist_sync_fn, should_sync=self._to_sync, should_unsync=self._should_unsync
        ):
            count = self.count.clone()
            mse = torch.where(count > 0, self.sse / count.clamp(min=1), math.nan)
        return {"count": count, "mse": mse}

    def extra_repr(self) -> str:
        if self.labelled:
            return f"class_weights={self.weights}"
        a, b = self.weights[1], self.weights[0]
        return f"hit_weight={a}, nonhit_weight={b}, hit_threshold={self.hit_threshold}"
