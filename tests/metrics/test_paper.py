"""The study's metrics on hand-made examples."""

import numpy as np
import pytest
import torch

from cityscapes_lab.metrics.paper import image_scores, paper_scores, soft_iou

GT = np.array([[0, 0, 1, 1],
               [0, 0, 1, 1],
               [2, 2, 2, 2],
               [2, 2, 2, 2]])
PRED = np.array([[0, 0, 1, 1],
                 [0, 1, 1, 1],
                 [2, 2, 2, 3],
                 [2, 2, 2, 2]])


def test_per_image_accuracy_and_iou_over_present_classes():
    accuracy, iou = image_scores(PRED, GT, num_classes=5)
    assert accuracy == pytest.approx(14 / 16)
    # class 0: 3/4, class 1: 4/5, class 2: 7/8; class 3 is only predicted: it is not averaged,
    # it only enlarges class 2's union
    assert iou == pytest.approx((3 / 4 + 4 / 5 + 7 / 8) / 3, abs=1e-6)


def test_perfect_and_disjoint_predictions():
    assert image_scores(GT, GT, 5) == pytest.approx((1.0, 1.0))
    assert image_scores(np.full_like(GT, 4), GT, 5) == pytest.approx((0.0, 0.0))


def test_means_are_over_images():
    scores = paper_scores(np.stack([PRED, GT]), np.stack([GT, GT]), 5)
    assert scores.mpa == pytest.approx((14 / 16 + 1) / 2)
    assert scores.miou == pytest.approx(((3 / 4 + 4 / 5 + 7 / 8) / 3 + 1) / 2, abs=1e-6)


def test_soft_iou_counts_every_class_including_absent_ones():
    target = torch.tensor(GT)[None]
    one_hot = torch.nn.functional.one_hot(target, 5).permute(0, 3, 1, 2).float()
    # a perfect, confident prediction: classes 0-2 score 1, classes 3 and 4 (absent, never predicted) score 0
    assert soft_iou(one_hot, target).item() == pytest.approx(3 / 5)
    probabilities = torch.softmax(torch.randn(1, 5, 4, 4), dim=1)
    y, p = one_hot, probabilities
    inter = (y * p).sum((0, 2, 3))
    expected = (inter / (y.sum((0, 2, 3)) + p.sum((0, 2, 3)) - inter)).mean()
    assert soft_iou(probabilities, target).item() == pytest.approx(expected.item(), abs=1e-6)
