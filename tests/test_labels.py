"""The label tables against the official cityscapesscripts definitions."""

import numpy as np
from cityscapesscripts.helpers.labels import labels as official

from cityscapes_lab import labels


def test_every_official_label_maps_to_its_train_id():
    for label in official:
        if label.id < 0:
            continue
        assert labels.LABELID_TO_TRAINID[label.id] == (label.trainId if 0 <= label.trainId < 255 else 255)


def test_nineteen_train_classes_in_official_order():
    assert labels.NUM_TRAIN_CLASSES == 19
    expected = [l.name for l in sorted((l for l in official if 0 <= l.trainId < 255), key=lambda l: l.trainId)]
    assert list(labels.TRAIN_CLASS_NAMES) == expected
    assert labels.TRAIN_CLASS_NAMES[0] == "road" and labels.TRAIN_CLASS_NAMES[18] == "bicycle"
    for train_id, name in enumerate(labels.TRAIN_CLASS_NAMES):
        label_id = labels.TRAINID_TO_LABELID[train_id]
        assert labels.ID_TO_LABEL[int(label_id)].name == name


def test_paper_scheme_shifts_positive_ids_by_one():
    assert labels.PAPER_NUM_CLASSES == 35
    assert labels.LABELID_TO_PAPER[0] == 0  # unlabeled shares index 0 with the inconsistency mask
    for label_id in range(1, 34):
        assert labels.LABELID_TO_PAPER[label_id] == label_id + 1
    produced = set(labels.LABELID_TO_PAPER[:34].tolist())
    assert labels.PAPER_UNUSED_INDEX not in produced and produced == {0, *range(2, 35)}
    # round trip and the study's named examples (paper-protocol notes 1.3): road 8, sky 24, car 27, bicycle 34
    assert np.array_equal(labels.PAPER_TO_LABELID[labels.LABELID_TO_PAPER[:34]], np.arange(34))
    named = {labels.PAPER_CLASS_NAMES[i]: i for i in range(35)}
    assert (named["road"], named["sky"], named["car"], named["bicycle"]) == (8, 24, 27, 34)


def test_paper_to_train_id_goes_through_label_ids():
    for index in range(2, 35):
        label = labels.ID_TO_LABEL[index - 1]
        expected = label.trainId if 0 <= label.trainId < 255 else 255
        assert labels.PAPER_TO_TRAINID[index] == expected
    assert labels.PAPER_TO_TRAINID[0] == 255 and labels.PAPER_TO_TRAINID[1] == 255


def test_palettes_and_categories_come_from_the_table():
    for label in official:
        if label.id >= 0:
            assert tuple(labels.LABELID_PALETTE[label.id]) == label.color
    assert tuple(labels.TRAINID_PALETTE[0]) == (128, 64, 128)  # road
    assert tuple(labels.PAPER_PALETTE[8]) == (128, 64, 128)
    assert labels.CATEGORY_NAMES == ("flat", "construction", "object", "nature", "sky", "human", "vehicle")
    assert labels.CATEGORY_NAMES[labels.TRAINID_TO_CATEGORY[13]] == "vehicle"  # car


def test_group_labels_resolve_like_the_official_tools():
    label, group = labels.resolve_annotation_label("cargroup")
    assert (label.name, group) == ("car", True)
    label, group = labels.resolve_annotation_label("polegroup")  # a label of its own
    assert (label.name, group) == ("polegroup", False)
