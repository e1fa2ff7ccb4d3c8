"""File names and folders of the official Cityscapes download, and its official cities and counts."""

from __future__ import annotations

import re
from dataclasses import dataclass

IMAGE_FOLDER = "leftImg8bit"
FINE_FOLDER = "gtFine"
COARSE_FOLDER = "gtCoarse"

#: The official zips and the top-level folder each one holds.
OFFICIAL_ZIPS = {
    "leftImg8bit_trainvaltest.zip": IMAGE_FOLDER,
    "gtFine_trainvaltest.zip": FINE_FOLDER,
    "leftImg8bit_trainextra.zip": IMAGE_FOLDER,
    "gtCoarse.zip": COARSE_FOLDER,
}

OFFICIAL_CITIES: dict[str, tuple[str, ...]] = {
    "train": ("aachen", "bochum", "bremen", "cologne", "darmstadt", "dusseldorf", "erfurt", "hamburg", "hanover",
              "jena", "krefeld", "monchengladbach", "strasbourg", "stuttgart", "tubingen", "ulm", "weimar", "zurich"),
    "val": ("frankfurt", "lindau", "munster"),
    "test": ("berlin", "bielefeld", "bonn", "leverkusen", "mainz", "munich"),
    "train_extra": ("augsburg", "bad-honnef", "bamberg", "bayreuth", "dortmund", "dresden", "duisburg", "erlangen",
                    "freiburg", "heidelberg", "heilbronn", "karlsruhe", "konigswinter", "konstanz", "mannheim",
                    "muhlheim-ruhr", "nuremberg", "oberhausen", "saarbrucken", "schweinfurt", "troisdorf",
                    "wuppertal", "wurzburg"),
}
OFFICIAL_COUNTS = {"train": 2975, "val": 500, "test": 1525, "train_extra": 19998}
OFFICIAL_SIZE = (2048, 1024)  # width, height

_FRAME_ID = re.compile(r"([a-z][a-z-]*)_(\d{6})_(\d{6})")


@dataclass(frozen=True, order=True)
class FrameId:
    """One Cityscapes frame, ``<city>_<seq:06d>_<frame:06d>``: the id every file of the frame starts with."""

    city: str
    seq: int
    frame: int

    def __str__(self) -> str:
        return f"{self.city}_{self.seq:06d}_{self.frame:06d}"


def find_frame_id(text: str) -> FrameId | None:
    """The first ``<city>_<seq>_<frame>`` in ``text`` (a file name or path), or None."""
    match = _FRAME_ID.search(text)
    return FrameId(match[1], int(match[2]), int(match[3])) if match else None


def image_path(split: str, frame: FrameId) -> str:
    """``leftImg8bit/<split>/<city>/<id>_leftImg8bit.png``, relative to the dataset root."""
    return f"{IMAGE_FOLDER}/{split}/{frame.city}/{frame}_{IMAGE_FOLDER}.png"


def annotation_path(split: str, frame: FrameId, kind: str, folder: str = FINE_FOLDER) -> str:
    """``gtFine/<split>/<city>/<id>_gtFine_<kind>`` with kind one of labelIds.png, instanceIds.png, color.png,
    polygons.json (``folder`` gtCoarse for coarse annotations)."""
    return f"{folder}/{split}/{frame.city}/{frame}_{folder}_{kind}"


def label_path(split: str, frame: FrameId, folder: str = FINE_FOLDER) -> str:
    """The ``*_labelIds.png`` of a frame."""
    return annotation_path(split, frame, "labelIds.png", folder)
