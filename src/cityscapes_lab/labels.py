"""The Cityscapes label tables, derived from the official ``cityscapesscripts`` definitions.

``cityscapesscripts.helpers.labels`` is the single source of truth; nothing here re-types a name, an id or a
colour. Everything else in the package looks labels up here. Two index schemes are derived from it:

* ``trainId``: the official benchmark's 19 evaluated classes, everything else 255 (ignored).
* ``paper``: the Inconsistency-Masks study's 35 indices. labelId 0 stays 0, labelId k>0 becomes k+1, so index 1 is
  never produced, and index 0 doubles as the inconsistency-mask class (paper-protocol notes 1.3 and 8.1).
"""

from __future__ import annotations

import numpy as np
from cityscapesscripts.helpers import labels as _official

#: Every label of the official table with a non-negative id (drops "license plate", id -1, which no labelIds PNG
#: ever holds because the official tools do not draw negative ids).
LABELS: tuple[_official.Label, ...] = tuple(label for label in _official.labels if label.id >= 0)
NAME_TO_LABEL = {label.name: label for label in LABELS}
ID_TO_LABEL = {label.id: label for label in LABELS}

NUM_LABEL_IDS = max(ID_TO_LABEL) + 1  # 34: labelIds 0..33
IGNORE_INDEX = 255

# --- the official 19-class benchmark scheme -------------------------------------------------------------------
TRAIN_LABELS: tuple[_official.Label, ...] = tuple(
    sorted((label for label in LABELS if 0 <= label.trainId < IGNORE_INDEX), key=lambda label: label.trainId)
)
NUM_TRAIN_CLASSES = len(TRAIN_LABELS)  # 19
TRAIN_CLASS_NAMES: tuple[str, ...] = tuple(label.name for label in TRAIN_LABELS)
CATEGORY_NAMES: tuple[str, ...] = tuple(
    dict.fromkeys(label.category for label in sorted(TRAIN_LABELS, key=lambda label: label.categoryId))
)
#: trainId -> index into CATEGORY_NAMES (the categories of the evaluated classes, in categoryId order).
TRAINID_TO_CATEGORY = np.array([CATEGORY_NAMES.index(label.category) for label in TRAIN_LABELS], dtype=np.int64)


def _lut(pairs: dict[int, int], fill: int) -> np.ndarray:
    """A 256-entry uint8 look-up table: ``lut[key] = value``, every other entry ``fill``."""
    table = np.full(256, fill, dtype=np.uint8)
    for key, value in pairs.items():
        table[key] = value
    return table


#: labelId -> trainId (255 for every non-evaluated or unknown id). Use as ``LABELID_TO_TRAINID[label_image]``.
LABELID_TO_TRAINID = _lut({label.id: label.trainId for label in LABELS}, IGNORE_INDEX)
#: trainId -> labelId, for writing predictions in the official submission format (255 -> 0, "unlabeled").
TRAINID_TO_LABELID = _lut({label.trainId: label.id for label in TRAIN_LABELS}, 0)

# --- the study's 35-index scheme ------------------------------------------------------------------------------
PAPER_NUM_CLASSES = NUM_LABEL_IDS + 1  # 35
PAPER_IM_INDEX = 0  # the inconsistency-mask value, shared with Cityscapes "unlabeled" (note 8.1)
PAPER_UNUSED_INDEX = 1  # no labelId maps here; the channel stays empty


def labelid_to_paper(label_id: int) -> int:
    """The study's rule: labelId 0 stays 0, labelId k > 0 becomes k + 1."""
    return label_id + 1 if label_id > 0 else 0


LABELID_TO_PAPER = _lut({label.id: labelid_to_paper(label.id) for label in LABELS}, PAPER_IM_INDEX)
#: paper index -> labelId (index 1, never produced, reads as "unlabeled").
PAPER_TO_LABELID = _lut({labelid_to_paper(label.id): label.id for label in LABELS}, 0)[:PAPER_NUM_CLASSES]
#: paper index -> trainId, so paper-protocol results can also be scored on the official 19 classes.
PAPER_TO_TRAINID = LABELID_TO_TRAINID[PAPER_TO_LABELID]
PAPER_CLASS_NAMES: tuple[str, ...] = tuple(
    "unlabeled / inconsistency mask" if index == PAPER_IM_INDEX
    else "(unused)" if index == PAPER_UNUSED_INDEX
    else ID_TO_LABEL[int(PAPER_TO_LABELID[index])].name
    for index in range(PAPER_NUM_CLASSES)
)

# --- colours (the official palette) ---------------------------------------------------------------------------


def _palette(index_to_label: dict[int, _official.Label]) -> np.ndarray:
    palette = np.zeros((256, 3), dtype=np.uint8)
    for index, label in index_to_label.items():
        palette[index] = label.color
    return palette


#: labelId -> RGB, as the official ``*_gtFine_color.png``.
LABELID_PALETTE = _palette(ID_TO_LABEL)
#: trainId -> RGB (255 -> black).
TRAINID_PALETTE = _palette(dict(enumerate(TRAIN_LABELS)))
#: paper index -> RGB (index 0, unlabeled or inconsistency mask, is black).
PAPER_PALETTE = LABELID_PALETTE[PAPER_TO_LABELID]


def resolve_annotation_label(name: str) -> tuple[_official.Label, bool]:
    """The label of a polygon annotation and whether it is a group ("cargroup" -> car, True), as the official
    tools read ``*_polygons.json``."""
    if name not in NAME_TO_LABEL and name.endswith("group"):
        return NAME_TO_LABEL[name[: -len("group")]], True
    return NAME_TO_LABEL[name], False
