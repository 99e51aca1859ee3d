"""Probe metrics: mean-class recall@k (the EPIC-KITCHENS-100 definition) and top-k accuracy.

Definitions (scores (N, C) of N samples over C classes, labels (N,) with -1 for "no class"):

- a sample is a *hit at k* when its true class is among its k highest scores (k is capped at C);
- ``recall@k`` of class c = hits at k among the samples labelled c / number of samples labelled c;
- **mean-class recall@k** = the average of recall@k over the classes *present in the evaluated
  split* (at least one sample labelled c). Classes with no sample there are left out, whether or
  not the model predicts them. This is EPIC-KITCHENS-100's anticipation metric (and V-JEPA 2's
  ``ClassMeanRecall``);
- ``top-k accuracy`` = hits at k / N over *all* samples.

Labels of -1 (an action whose verb + noun pair never occurs in training, see
`worldmodel.data.annotations`; a classification video whose label no training video has, see
`worldmodel.probe.classification_clip_sets`) have no output that could be right:

- they are misses in top-k accuracy and stay in its denominator;
- in mean-class recall, their true classes are classes present in the split all the same: when the
  caller says which they are (`classification_metrics`: ``labels["<head>:unseen"]``, the true class id
  of each -1 sample), each distinct one enters the average with recall 0, as EPIC-KITCHENS-100 scores
  a pair the model failed to rank. Without that, a -1 sample belongs to no class and counts nowhere
  in the class average (`per_class_recall`, `mean_class_recall`, `MeanClassRecall`).

Why not torchmetrics' ``MulticlassRecall(average="macro", top_k=k)``: its macro average keeps every
class with a true positive, false positive *or* false negative, so a class absent from the split that
the model predicts enters the average with recall 0 (with 4 classes, labels [0, 1, 1, 2] and one
sample of class 1 predicted as the absent class 3, it gives 0.5 where the EK100 value is 2/3); and
its ``ignore_index`` drops -1 samples from accuracy denominators too. `MeanClassRecall` below is a
torchmetrics `Metric` (states summed across processes) that implements the EK100 definition.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = [
    "MeanClassRecall",
    "TopKAccuracy",
    "classification_metrics",
    "mean_class_recall",
    "per_class_recall",
    "topk_accuracy",
    "topk_hits",
]

UNSEEN = ":unseen"  # labels["<head>" + UNSEEN]: the true class of each -1 sample of <head> (see the module note)


def _check(scores: Tensor, labels: Tensor) -> None:
    if scores.ndim != 2:
        raise ValueError(f"metrics: scores must be (N, C), got shape {tuple(scores.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"metrics: labels must be integer class ids (or -1), got dtype {labels.dtype}")
    if labels.shape != scores.shape[:1]:
        raise ValueError(f"metrics: labels must be (N,) = ({scores.shape[0]},), got shape {tuple(labels.shape)}")
    if labels.numel() and int(labels.max()) >= scores.shape[1]:
        raise ValueError(
            f"metrics: label {int(labels.max())} is out of range for {scores.shape[1]} classes "
            "(labels are class ids 0..C-1, or -1 for a sample with no class)"
        )
    if labels.numel() and int(labels.min()) < -1:
        raise ValueError(f"metrics: labels must be >= -1, got {int(labels.min())}")


def topk_hits(scores: Tensor, labels: Tensor, k: int) -> Tensor:
    """Bool (N,): is the true class among the k highest scores? Always False for label -1.

    Ties are broken by `torch.topk`, in an order it does not specify (a constant score row credits some
    arbitrary k classes, not the lowest indices); k is capped at C.
    """
    _check(scores, labels)
    if k < 1:
        raise ValueError(f"metrics: k must be >= 1, got {k}")
    top = scores.topk(min(k, scores.shape[1]), dim=1).indices  # (N, k)
    return (top == labels[:, None]).any(dim=1) & (labels >= 0)


def per_class_recall(scores: Tensor, labels: Tensor, k: int, num_classes: int | None = None) -> tuple[Tensor, Tensor]:
    """(recall (C,), support (C,)): recall@k of each class, NaN for classes with no sample; support = samples per class.

    Samples labelled -1 belong to no class and count nowhere.
    """
    num_classes = scores.shape[1] if num_classes is None else num_classes
    hits = topk_hits(scores, labels, k)
    valid = labels >= 0
    support = torch.bincount(labels[valid], minlength=num_classes)[:num_classes]
    hit_counts = torch.bincount(labels[valid & hits], minlength=num_classes)[:num_classes]
    recall = hit_counts.double() / support.clamp(min=1)
    recall = torch.where(support > 0, recall, torch.full_like(recall, math.nan))
    return recall, support


def mean_class_recall(scores: Tensor, labels: Tensor, k: int) -> float:
    """EK100 mean-class recall@k: mean over the classes present in `labels` (NaN when none is)."""
    recall, support = per_class_recall(scores, labels, k)
    present = support > 0
    return float(recall[present].mean()) if bool(present.any()) else math.nan


def topk_accuracy(scores: Tensor, labels: Tensor, k: int = 1) -> float:
    """Share of all N samples whose true class is in the top k; -1 labels count as misses (NaN when N = 0)."""
    hits = topk_hits(scores, labels, k)
    return float(hits.double().mean()) if hits.numel() else math.nan


class MeanClassRecall(Metric):
    """Streaming EK100 mean-class recall@k; `update(scores (N, C), labels (N,))`, then `compute()`.

    States are per-class hit and sample counts (summed across processes), so the result does not
    depend on how the samples were batched or split between ranks.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, num_classes: int, top_k: int = 5, **kwargs) -> None:
        super().__init__(**kwargs)
        if num_classes < 1 or top_k < 1:
            raise ValueError(f"MeanClassRecall: num_classes and top_k must be >= 1, got {num_classes}, {top_k}")
        self.num_classes = int(num_classes)
        self.top_k = int(top_k)
        self.add_state("hits", default=torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("support", default=torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, scores: Tensor, labels: Tensor) -> None:
        if scores.shape[-1] != self.num_classes:
            raise ValueError(f"MeanClassRecall: scores have {scores.shape[-1]} classes, expected {self.num_classes}")
        hits = topk_hits(scores, labels, self.top_k)
        valid = labels >= 0
        self.support += torch.bincount(labels[valid], minlength=self.num_classes)
        self.hits += torch.bincount(labels[valid & hits], minlength=self.num_classes)

    def per_class(self) -> Tensor:
        """recall (C,), NaN for classes with no sample so far."""
        recall = self.hits.double() / self.support.clamp(min=1)
        return torch.where(self.support > 0, recall, torch.full_like(recall, math.nan))

    def compute(self) -> Tensor:
        present = self.support > 0
        if not bool(present.any()):
            return torch.tensor(math.nan, dtype=torch.float64)
        return (self.hits[present].double() / self.support[present]).mean()


class TopKAccuracy(Metric):
    """Streaming top-k accuracy over all samples, -1 labels counted as misses."""

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, top_k: int = 1, **kwargs) -> None:
        super().__init__(**kwargs)
        if top_k < 1:
            raise ValueError(f"TopKAccuracy: top_k must be >= 1, got {top_k}")
        self.top_k = int(top_k)
        self.add_state("hits", default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, scores: Tensor, labels: Tensor) -> None:
        self.hits += topk_hits(scores, labels, self.top_k).sum()
        self.total += labels.numel()

    def compute(self) -> Tensor:
        if int(self.total) == 0:
            return torch.tensor(math.nan, dtype=torch.float64)
        return self.hits.double() / self.total


def classification_metrics(
    scores: Mapping[str, Tensor],
    labels: Mapping[str, Tensor],
    ks: Sequence[int] = (1, 5),
    class_names: Mapping[str, Sequence[str] | Mapping[int, str]] | None = None,
) -> dict:
    """Metrics of several heads (e.g. verb, noun, action) as one flat dict plus per-class details.

    labels may also hold ``"<head>:unseen"`` (N,): for each sample labelled -1, the id of its true class
    when it has one (a class present in the split that the head has no output for, e.g. a verb + noun
    pair never seen in training; ids in any numbering of such classes), else -1. Each distinct such
    class counts in ``<head>_recall@<k>`` as a present class with recall 0.

    Returns ``{"<head>_recall@<k>": float, "<head>_top<k>": float for k in ks, ...,
    "per_class": {head: [{"class": c, "name": ..., "support": n, "recall@<k>": r, ...}, ...]},
    "<head>_num_unlabelled": number of -1 labels, "<head>_num_unseen_classes": distinct classes among
    them}``; per_class lists the classes present in the split that the head has outputs for.
    """
    out: dict = {}
    per_class: dict[str, list[dict]] = {}
    for head, head_scores in scores.items():
        head_labels = labels[head].to(head_scores.device).long()
        head_scores = head_scores.float()
        num_unseen = 0
        if head + UNSEEN in labels:
            unseen = labels[head + UNSEEN].to(head_labels.device).long()
            if unseen.shape != head_labels.shape:
                raise ValueError(f"metrics: labels[{head + UNSEEN!r}] must be (N,) like labels[{head!r}], "
                                 f"got {tuple(unseen.shape)}")  # fmt: skip
            num_unseen = int(torch.unique(unseen[(head_labels < 0) & (unseen >= 0)]).numel())
        recalls = {}
        for k in ks:
            recall, support = per_class_recall(head_scores, head_labels, k)
            recalls[k] = recall
            present = support > 0
            num_classes = int(present.sum()) + num_unseen  # the unseen classes: recall 0
            out[f"{head}_recall@{k}"] = float(recall[present].sum()) / num_classes if num_classes else math.nan
            out[f"{head}_top{k}"] = topk_accuracy(head_scores, head_labels, k)
        out[f"{head}_num_unlabelled"] = int((head_labels < 0).sum())
        out[f"{head}_num_unseen_classes"] = num_unseen
        names = (class_names or {}).get(head)
        rows = []
        for c in torch.nonzero(support > 0).flatten().tolist():
            row = {"class": c, "support": int(support[c])}
            if names is not None:
                try:
                    row["name"] = str(names[c])
                except (KeyError, IndexError):
                    pass
            row.update({f"recall@{k}": float(recalls[k][c]) for k in ks})
            rows.append(row)
        per_class[head] = rows
    out["per_class"] = per_class
    return out
