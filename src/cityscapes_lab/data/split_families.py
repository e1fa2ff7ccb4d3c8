"""The families of labeled subsets of Cityscapes train for the semi-supervised benchmark (standard protocol).

Published semi-supervised results use one of two fixed partitions of the 2975 official train images, and a
result is comparable only to results on the same one (at 1/16 the two share 8 of 186 images). Both ship with the
package as id lists (``split_lists/<family>/<fraction>.txt``, one ``<city>_<seq>_<frame>`` a line, sorted); the
unlabeled set of a subset is the rest of train. ``seeded`` is a draw of our own (``--subset-seed``), comparable to
no published result.

``FAMILIES`` is the one table everything derives from: the command-line choices and help, the subsets
``prepare`` makes, the files it reads, and what ``synth --train-ids`` can name.

The lists are the labeled-id files the two families of published results use (copied as data):

- ``cps``: the partition of CPS (Chen et al., CVPR 2021), reused by UniMatch, UniMatch V2, CorrMatch, AllSpark
  and most later papers; 1/30 (100 images), 1/16, 1/8, 1/4, 1/2 (186 / 372 / 744 / 1488).
- ``u2pl``: the partition of U2PL (Wang et al., CVPR 2022), reused by iMAS and the Inconsistency Masks paper (v3);
  1/16, 1/8, 1/4, 1/2 (186 / 372 / 744 / 1488).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from ..errors import ConfigError, DataError
from .layout import find_frame_id

# .splits (NumPy) is imported where it is used: the command line builds its help from FAMILIES and stays light.

LIST_FOLDER = "split_lists"  # package data of cityscapes_lab.data
SEEDED_FRACTIONS = ("1/16", "1/8", "1/4", "1/2")  # what a seeded draw makes unless --fractions says otherwise


@dataclass(frozen=True)
class SplitFamily:
    """One family of labeled subsets: where it comes from, and fraction -> list file (none for ``seeded``)."""

    name: str
    title: str
    used_by: str
    lists: Mapping[str, str]  # fraction as written in split names ("1/16") -> file in split_lists/<name>/

    @property
    def published(self) -> bool:
        """Whether the subsets are fixed lists (and so comparable to published results)."""
        return bool(self.lists)

    @property
    def fractions(self) -> tuple[str, ...]:
        """The subsets ``prepare`` makes by default, smallest first."""
        return tuple(self.lists) or SEEDED_FRACTIONS


#: family -> fractions -> file (in split_lists/<family>/), smallest subset first.
FAMILIES: dict[str, SplitFamily] = {
    "cps": SplitFamily("cps", "the CPS partition",
                       "CPS, UniMatch, UniMatch V2, CorrMatch, AllSpark and most later papers",
                       {"1/30": "1_30.txt", "1/16": "1_16.txt", "1/8": "1_8.txt", "1/4": "1_4.txt", "1/2": "1_2.txt"}),
    "u2pl": SplitFamily("u2pl", "the U2PL partition", "U2PL, iMAS, the Inconsistency Masks paper (v3)",
                        {"1/16": "1_16.txt", "1/8": "1_8.txt", "1/4": "1_4.txt", "1/2": "1_2.txt"}),
    "seeded": SplitFamily("seeded", "a seeded draw (--subset-seed)", "no published result", {}),
}
#: The family most published Cityscapes semi-supervised results use, so numbers made with it compare with most papers.
DEFAULT_FAMILY = "cps"


def get_family(name: str) -> SplitFamily:
    """The family called ``name``; ConfigError naming the choices otherwise."""
    if name not in FAMILIES:
        raise ConfigError(f"unknown split family {name!r}; choose one of: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def list_path(family: str, fraction: str) -> str:
    """The list file of a published subset, relative to the package's ``split_lists`` folder (``cps/1_16.txt``)."""
    return f"{family}/{get_family(family).lists[fraction]}"


def _list_bytes(relpath: str) -> bytes:
    node = resources.files(__package__).joinpath(LIST_FOLDER)
    for part in relpath.split("/"):
        node = node.joinpath(part)
    try:
        return node.read_bytes()
    except OSError:  # an installation built without the package data
        raise DataError(f"{LIST_FOLDER}/{relpath} is missing from the installed package; reinstall cityscapes-lab "
                        "(its wheel ships the split lists)") from None


@lru_cache(maxsize=None)
def _read_list(relpath: str) -> tuple[str, ...]:
    text = _list_bytes(relpath).decode()
    ids = tuple(line.strip() for line in text.splitlines() if line.strip())
    bad = [i for i in ids if find_frame_id(i) is None or str(find_frame_id(i)) != i]
    if bad or list(ids) != sorted(set(ids)):  # a damaged installation, not the user's input
        raise DataError(f"{relpath} of the package's split lists is damaged ({len(bad)} malformed lines or not "
                        "sorted and unique); reinstall cityscapes-lab")
    return ids


def published_ids(family: str, fraction: str) -> list[str]:
    """The sorted labeled ids of a published subset, read from the package data."""
    return list(_read_list(list_path(family, fraction)))


def list_sha256(family: str, fraction: str) -> str:
    """The sha256 of a shipped list file, recorded in the prepared folder's metadata (which exact list it used)."""
    return hashlib.sha256(_list_bytes(list_path(family, fraction))).hexdigest()


def family_ids(families: Iterable[str]) -> list[str]:
    """Every labeled id of the given published families, sorted: the train ids stand-in data must hold."""
    ids: set[str] = set()
    for name in families:
        family = get_family(name)
        if not family.published:
            raise ConfigError(f"split family {name!r} is a seeded draw and names no images; choose one of: "
                              f"{', '.join(f for f, v in FAMILIES.items() if v.published)}")
        for fraction in family.lists:
            ids.update(published_ids(name, fraction))
    return sorted(ids)


def resolve_fractions(family: str, fractions: Sequence[str] | None) -> tuple[str, ...]:
    """The fractions to make: the family's by default; for a published family each given one must be one it
    publishes, written as the table writes it (``0.0625`` -> ``1/16``), so split names are the same for all."""
    from .splits import parse_fraction

    chosen = get_family(family)
    if fractions is None:
        return chosen.fractions
    if not fractions:
        raise ConfigError("--fractions names no fraction; give some, e.g. 1/16,1/8")
    if not chosen.published:
        for text in fractions:
            parse_fraction(text)
        return tuple(fractions)
    resolved = []
    for text in fractions:
        value = parse_fraction(text)
        match = [f for f in chosen.lists if math.isclose(parse_fraction(f), value, rel_tol=0, abs_tol=1e-9)]
        if not match:
            raise ConfigError(f"--fractions {text}: the {family} family publishes {', '.join(chosen.lists)}; choose "
                              "among them, or use --split-family seeded for other fractions")
        resolved.append(match[0])
    return tuple(dict.fromkeys(resolved))


def labeled_splits(family: str, fractions: Sequence[str], train: Sequence[str], seed: int = 0, *,
                   source: str = "the download", stand_in: bool = False) -> dict[str, list[str]]:
    """``train_labeled_<f>`` and its complement ``train_unlabeled_<f>`` for each fraction, from the sorted ids
    of the download's train split.

    A published family takes its lists as they are; a labeled id the download lacks is a DataError (before
    anything is written), since a subset with images missing would silently measure something else.
    """
    from .splits import fraction_name, labeled_subset, parse_fraction

    chosen = get_family(family)
    present = set(train)
    labeled: dict[str, list[str]] = {}
    for fraction in fractions:
        if chosen.published:
            labeled[fraction] = published_ids(family, fraction)
        else:
            labeled[fraction] = labeled_subset(train, parse_fraction(fraction), seed)
    missing = sorted({i for ids in labeled.values() for i in ids} - present)
    if missing:
        named = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        fix = ("stand-in data: make it with `cityscapes-lab synth --train-ids " + family + "`" if stand_in else
               "use a complete download of leftImg8bit/train and gtFine/train (leftImg8bit_trainvaltest.zip, "
               "gtFine_trainvaltest.zip)")
        raise DataError(f"{source}: {len(missing)} labeled image(s) of the {family} split family are missing from "
                        f"the train split ({named}); {fix}, or pass --split-family seeded for a partial download")
    splits = {}
    for fraction, ids in labeled.items():
        chosen_ids = set(ids)
        splits[f"train_labeled_{fraction_name(fraction)}"] = list(ids)
        splits[f"train_unlabeled_{fraction_name(fraction)}"] = [i for i in train if i not in chosen_ids]
    return splits
