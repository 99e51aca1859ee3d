"""Mean-class recall@k (EPIC-KITCHENS-100 definition) and top-k accuracy against hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from worldmodel.metrics import (
    MeanClassRecall,
    TopKAccuracy,
    classification_metrics,
    mean_class_recall,
    per_class_recall,
    topk_accuracy,
    topk_hits,
)


def _scores(rankings: list[list[int]], num_classes: int) -> torch.Tensor:
    """Scores (N, C) whose descending order is the given ranking (unlisted classes score lowest)."""
    scores = torch.full((len(rankings), num_classes), -100.0)
    for i, ranking in enumerate(rankings):
        for position, c in enumerate(ranking):
            scores[i, c] = float(num_classes - position)
    return scores


def test_recall_averages_only_classes_present_even_when_an_absent_class_is_predicted():
    # 4 classes; class 3 never occurs in the split but is predicted first for a class-1 sample
    scores = _scores([[0, 3], [3, 1], [0, 3], [2, 3]], 4)
    labels = torch.tensor([0, 1, 1, 2])
    # recall@1: class 0: 1/1, class 1: 0/2 (sample 2 predicts 0 first), class 2: 1/1 -> mean over {0,1,2}
    assert mean_class_recall(scores, labels, k=1) == pytest.approx((1 + 0 + 1) / 3)
    # torchmetrics' macro average would include class 3 (a false positive) with recall 0: 0.5
    assert mean_class_recall(scores, labels, k=1) != pytest.approx(0.5)
    # recall@2: sample 1 has 1 at rank 2, sample 2 ranks [0, 3]: class 1 = 1/2
    assert mean_class_recall(scores, labels, k=2) == pytest.approx((1 + 0.5 + 1) / 3)
    recall, support = per_class_recall(scores, labels, k=2)
    assert support.tolist() == [1, 2, 1, 0]
    assert recall[:3].tolist() == pytest.approx([1.0, 0.5, 1.0])
    assert math.isnan(recall[3])
    assert topk_accuracy(scores, labels, k=1) == pytest.approx(2 / 4)
    assert topk_accuracy(scores, labels, k=2) == pytest.approx(3 / 4)


def test_minus_one_labels_are_misses_for_accuracy_and_outside_the_class_average():
    scores = _scores([[0, 1], [1, 0], [1, 0], [0, 1], [2, 0]], 3)
    labels = torch.tensor([0, 1, -1, 0, -1])  # two actions whose pair was never seen in training
    assert topk_hits(scores, labels, k=3).tolist() == [True, True, False, True, False]
    # top-1: 3 correct out of all 5 samples (the -1 ones stay in the denominator)
    assert topk_accuracy(scores, labels, k=1) == pytest.approx(3 / 5)
    # even with k = C a -1 sample is never a hit
    assert topk_accuracy(scores, labels, k=3) == pytest.approx(3 / 5)
    # recall@1: classes 0 (2/2) and 1 (1/1) present; -1 is no class; class 2 absent
    assert mean_class_recall(scores, labels, k=1) == pytest.approx(1.0)
    _, support = per_class_recall(scores, labels, k=1)
    assert support.tolist() == [2, 1, 0]


def test_k_larger_than_classes_is_capped_and_all_unlabelled_gives_nan():
    scores = _scores([[1, 0], [0, 1]], 2)
    assert mean_class_recall(scores, torch.tensor([0, 1]), k=5) == 1.0
    assert math.isnan(mean_class_recall(scores, torch.tensor([-1, -1]), k=5))
    assert topk_accuracy(scores, torch.tensor([-1, -1]), k=5) == 0.0


def test_bad_labels_are_refused():
    scores = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="out of range"):
        topk_hits(scores, torch.tensor([0, 3]), 1)
    with pytest.raises(ValueError, match=">= -1"):
        topk_hits(scores, torch.tensor([0, -2]), 1)


def test_streaming_metrics_equal_the_functional_ones_whatever_the_batching():
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(50, 7, generator=generator)
    labels = torch.randint(-1, 5, (50,), generator=generator)  # classes 5, 6 absent; some -1
    for k in (1, 3, 5):
        recall, accuracy = MeanClassRecall(num_classes=7, top_k=k), TopKAccuracy(top_k=k)
        for chunk in (slice(0, 13), slice(13, 14), slice(14, 50)):
            recall.update(scores[chunk], labels[chunk])
            accuracy.update(scores[chunk], labels[chunk])
        assert float(recall.compute()) == pytest.approx(mean_class_recall(scores, labels, k))
        assert float(accuracy.compute()) == pytest.approx(topk_accuracy(scores, labels, k))
        expected, _ = per_class_recall(scores, labels, k)
        assert torch.allclose(recall.per_class(), expected.double(), equal_nan=True)


def test_classification_metrics_contract_keys_and_per_class_rows():
    scores = {"verb": _scores([[0, 1], [1, 0], [1, 0]], 3), "action": _scores([[2], [0], [1]], 4)}
    labels = {"verb": torch.tensor([0, 1, 0]), "action": torch.tensor([2, -1, 3])}
    out = classification_metrics(scores, labels, class_names={"verb": ["take", "put", "open"]})
    for head in ("verb", "action"):
        for key in ("recall@5", "recall@1", "top1", "top5"):
            assert f"{head}_{key}" in out
    assert out["verb_recall@1"] == pytest.approx((1 / 2 + 1) / 2)
    assert out["verb_top1"] == pytest.approx(2 / 3)
    assert out["action_top1"] == pytest.approx(1 / 3)  # the -1 sample counts as a miss
    assert out["action_recall@1"] == pytest.approx((1 + 0) / 2)  # classes 2 and 3 present
    assert out["action_num_unlabelled"] == 1
    assert out["action_num_unseen_classes"] == 0  # nobody said which class the -1 sample is
    assert [r["class"] for r in out["per_class"]["verb"]] == [0, 1]  # class 2 absent: no row
    assert out["per_class"]["verb"][1] == {"class": 1, "support": 1, "name": "put", "recall@1": 1.0, "recall@5": 1.0}


def test_unseen_classes_count_in_the_class_average_with_recall_zero():
    """EK100: the average is over the classes present in the split. A pair the head has no output for is
    such a class; each distinct one counts once, with recall 0, however many samples it has."""
    scores = {"action": _scores([[0], [1], [1], [0], [2]], 3)}
    labels = torch.tensor([0, -1, 1, 0, -1])
    cases = [  # unseen ids of the -1 samples -> classes in the average at k = 1 (0: 2/2, 1: 1/1)
        (torch.tensor([-1, 7, -1, -1, 7]), 1),  # one unseen pair, two samples
        (torch.tensor([-1, 7, -1, -1, 8]), 2),  # two unseen pairs
        (torch.tensor([-1, -1, -1, -1, -1]), 0),  # not said: outside the average, as before
        (torch.tensor([5, 7, 6, 5, 7]), 1),  # ids on labelled samples are ignored
    ]
    for unseen, extra in cases:
        out = classification_metrics(scores, {"action": labels, "action:unseen": unseen}, ks=(1,))
        assert out["action_num_unseen_classes"] == extra
        assert out["action_recall@1"] == pytest.approx(2 / (2 + extra))
        assert out["action_top1"] == pytest.approx(3 / 5)  # unchanged: -1 samples are misses either way
    only_unseen = classification_metrics(scores, {"action": torch.full((5,), -1), "action:unseen": torch.arange(5)}, ks=(1,))
    assert only_unseen["action_recall@1"] == 0.0 and only_unseen["action_num_unseen_classes"] == 5
    with pytest.raises(ValueError, match="action:unseen"):
        classification_metrics(scores, {"action": labels, "action:unseen": torch.tensor([1, 2])})
