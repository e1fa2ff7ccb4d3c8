"""The study's pseudo-labelling rules on hand-made arrays."""

import numpy as np
import pytest

from cityscapes_lab.data.augment import AugmentParams
from cityscapes_lab.semisup.rules import (GENERATION_SCHEDULE, copies_for_score, ensemble_label, evalnet_im_targets,
                                          evalnet_score, evalnet_targets, generation_params, inconsistency_mask,
                                          input_ensemble_inputs)

A = np.array([[5, 5, 7, 7],
              [5, 5, 7, 7],
              [9, 9, 9, 9],
              [9, 9, 9, 9]])
B = np.array([[5, 5, 7, 7],
              [5, 8, 7, 7],
              [9, 9, 9, 3],
              [9, 9, 9, 9]])
IMAGE = np.full((4, 4, 3), 200, dtype=np.uint8)


def test_im_keeps_agreement_and_masks_disagreement():
    label, mask, masked = inconsistency_mask(np.stack([A, B]), IMAGE)
    expected_mask = np.zeros((4, 4), bool)
    expected_mask[1, 1] = expected_mask[2, 3] = True
    assert np.array_equal(mask, expected_mask)
    assert np.array_equal(label, np.where(expected_mask, 0, A))
    assert np.all(masked[expected_mask] == 0) and np.all(masked[~expected_mask] == 200)


def test_im_with_three_teachers_and_without_blocking():
    C = A.copy()
    C[0, 0] = 1
    label, mask, masked = inconsistency_mask(np.stack([A, B, C]), IMAGE, block_input=False, block_output=False)
    assert mask.sum() == 3 and mask[0, 0] and mask[1, 1] and mask[2, 3]
    assert np.array_equal(masked, IMAGE)
    assert label[0, 0] == 0  # disagreement gives the IM class even unblocked (the first teacher's label is not kept)


def test_im_on_the_standard_protocol_ignores_disagreement():
    """fill=255: disagreeing pixels get the ignore label (trainId 0 is road, a real class); fill=None keeps the
    first teacher's class there, so only the input is blacked out."""
    teachers = np.stack([A, B]) - 5  # trainIds 0 (road), 2, 4, 3; B's 3 at (2, 3) becomes -2, set to 17
    teachers = np.where(teachers < 0, 17, teachers)
    label, mask, masked = inconsistency_mask(teachers, IMAGE, fill=255)
    assert mask.sum() == 2 and mask[1, 1] and mask[2, 3]
    assert label[1, 1] == label[2, 3] == 255
    assert np.array_equal(label[~mask], teachers[0][~mask]) and (label == 0).sum() == 3  # road kept as class 0
    assert np.all(masked[mask] == 0)
    kept, mask_kept, _ = inconsistency_mask(teachers, IMAGE, fill=None)
    assert np.array_equal(mask_kept, mask) and np.array_equal(kept, teachers[0])
    eroded, _, _ = inconsistency_mask(teachers, IMAGE, erode=3, dilate=0, fill=255)
    assert not (eroded == 255).any()  # eroded away, and the freed pixels take their neighbours' classes


def test_im_morphology():
    teachers = np.stack([np.full((7, 7), 4), np.full((7, 7), 4)])
    teachers[1, 2:5, 2:5] = 6  # a 3x3 disagreement block
    _, mask, _ = inconsistency_mask(teachers, np.zeros((7, 7, 3), np.uint8), erode=3)
    assert mask.sum() == 1 and mask[3, 3]  # eroded to its centre
    label, mask, _ = inconsistency_mask(teachers, np.zeros((7, 7, 3), np.uint8), dilate=3)
    assert mask.sum() == 25 and np.all(label[mask] == 0)


def test_soft_vote_is_the_argmax_of_mean_probabilities():
    p1 = np.array([[[0.6]], [[0.4]], [[0.0]]])  # (C=3, 1, 1)
    p2 = np.array([[[0.0]], [[0.45]], [[0.55]]])
    # majority of argmaxes would tie; the mean gives class 1 (0.425) over 0 (0.3) and 2 (0.275)
    assert ensemble_label(np.stack([p1, p2]))[0, 0] == 1


def test_input_ensemble_inputs():
    rng = np.random.default_rng(0)
    params = AugmentParams((0.7, 1.3), (-15, 15), 1, 15)
    cumulative = input_ensemble_inputs(IMAGE, 4, params, rng)
    assert len(cumulative) == 4 and not any(np.array_equal(x, IMAGE) for x in cumulative)
    independent = input_ensemble_inputs(IMAGE, 4, params, np.random.default_rng(0), cumulative=False)
    assert len(independent) == 4 and np.array_equal(independent[0], IMAGE)


def test_generation_schedule():
    assert [g.alpha for g in GENERATION_SCHEDULE] == [1.0, 1.25, 1.5, 1.75, 2.0]
    assert [g.augment.max_noise for g in GENERATION_SCHEDULE] == [3, 6, 9, 12, 15]
    assert generation_params(4).augment.max_blur == 1 and generation_params(9).alpha == 2.0


@pytest.mark.parametrize("score,copies", [(0.50, 5), (0.453, 5), (0.4531, 5), (0.372, 1), (0.30, 1), (0.38, 1),
                                          (0.389, 2), (0.405, 3), (0.42, 3), (0.421, 4), (0.45, 5)])
def test_im_plus_plus_copy_count(score, copies):
    # step = (0.453 - 0.372) / 5 = 0.0162: 1 + floor((score - 0.372) / step), at most 5
    assert copies_for_score(score) == copies


def test_evalnet_targets():
    truth = A
    candidate = B
    iou, detection = evalnet_targets(candidate, truth, num_classes=10, min_share=0.1)
    assert iou[5] == pytest.approx(3 / 4) and iou[7] == pytest.approx(1.0) and iou[9] == pytest.approx(7 / 8)
    assert iou[8] == 0 and iou[3] == 0  # predicted but absent from the ground truth
    assert detection.tolist() == [0, 0, 0, 0, 0, 1, 0, 1, 0, 1]


def test_evalnet_im_targets():
    label, mask, _ = inconsistency_mask(np.stack([A, B]), IMAGE)
    iou, detection = evalnet_im_targets(label, mask, A, num_classes=10)
    assert iou[0] == 1.0  # the pseudo-label has IM pixels and the ground truth no index 0
    assert iou[5] == pytest.approx(3 / 4) and iou[9] == pytest.approx(7 / 8) and iou[7] == 1.0
    assert detection[0] == 0  # no 0 in the ground truth outside the mask
    assert detection[5] == detection[7] == detection[9] == 1 and detection[3] == 0


def test_evalnet_score():
    iou = np.array([0.9, 0.2, 0.6, 0.4])
    detection = np.array([0.7, 0.1, 0.5, 0.9])
    assert evalnet_score(iou, detection) == pytest.approx((0.9 + 0.6 + 0.4) / 3)
    assert evalnet_score(iou, detection, slice(1, None)) == pytest.approx((0.6 + 0.4) / 2)
    assert evalnet_score(iou, np.zeros(4)) == 0.0


def test_an_unknown_labelling_rule_is_refused_not_run_as_im():
    import torch

    from cityscapes_lab.engine.runtime import Runtime
    from cityscapes_lab.semisup.pseudo import LabelingRule, label_batch

    with pytest.raises(ValueError, match="unknown labelling rule 'majority'"):
        LabelingRule("majority")
    rule = LabelingRule("im")
    object.__setattr__(rule, "kind", "majority")  # past the check: label_batch must refuse it as well
    with pytest.raises(ValueError, match="no code for the labelling rule 'majority'"):
        label_batch([torch.nn.Conv2d(3, 4, 1)], np.zeros((1, 4, 4, 3), np.uint8), ["a"], rule, Runtime.cpu(), 0)


class _ChannelVote(__import__("torch").nn.Module):
    """A stand-in teacher: class 0 where the given colour channel is bright, else 1 (uint8 input, as the contract)."""

    def __init__(self, channel: int):
        super().__init__()
        self.channel = channel

    def forward(self, x):
        bright = x[:, self.channel:self.channel + 1].float() / 255
        return __import__("torch").cat([bright, 1 - bright], dim=1)


def test_im_label_batch_without_images_gives_the_same_labels_and_masks():
    """Two teachers disagree where the red and green channels differ; the labels and masks do not depend on
    whether the blanked images are made, and the blanked images are the inputs with 0 under the mask."""
    from cityscapes_lab.engine.runtime import Runtime
    from cityscapes_lab.semisup.pseudo import LabelingRule, label_batch
    from cityscapes_lab.semisup.rules import blank_image, inconsistency_label

    images = np.zeros((2, 4, 4, 3), np.uint8)
    images[:, :2, :, 0] = 255  # red: top half
    images[:, :, :2, 1] = 255  # green: left half
    images[1, 3, 3, 1] = 255  # the second image: one more disagreement, a green pixel bottom right
    images[..., 2] = 90
    teachers, rule = [_ChannelVote(0), _ChannelVote(1)], LabelingRule("im")
    blanked, labels, masks = label_batch(teachers, images, ["a", "b"], rule, Runtime.cpu(), 0)
    none, labels_only, masks_only = label_batch(teachers, images, ["a", "b"], rule, Runtime.cpu(), 0,
                                                with_images=False)
    assert none is None and np.array_equal(labels_only, labels) and np.array_equal(masks_only, masks)
    expected = (images[..., 0] > 127) != (images[..., 1] > 127)  # the teachers disagree
    assert np.array_equal(masks, expected) and masks[0].sum() == 8 and masks[1].sum() == 9
    assert np.array_equal(labels, np.where(expected, 0, np.where(images[..., 0] > 127, 0, 1)))
    assert np.all(blanked[masks] == 0) and np.array_equal(blanked[~masks], images[~masks])
    label, mask = inconsistency_label(np.stack([A, B]))
    assert np.array_equal(blank_image(IMAGE, mask), inconsistency_mask(np.stack([A, B]), IMAGE)[2])
    assert np.array_equal(label, inconsistency_mask(np.stack([A, B]), IMAGE)[0])
