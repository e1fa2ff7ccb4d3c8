"""The study's split against scikit-learn, and the standard protocol's labeled subsets."""

import pytest
from sklearn.model_selection import train_test_split

from cityscapes_lab.data.layout import OFFICIAL_CITIES, FrameId
from cityscapes_lab.data.splits import fraction_name, labeled_subset, parse_fraction, study_split
from cityscapes_lab.errors import ConfigError


def official_like_names(split: str, count: int) -> list[str]:
    cities = OFFICIAL_CITIES[split]
    return sorted(f"{FrameId(cities[i % len(cities)], i // len(cities), 19)}.png" for i in range(count))


@pytest.mark.parametrize("split,count,test_size,sizes", [
    ("train", 2975, 0.9, (297, 2678)),
    ("val", 500, 0.5, (250, 250)),
])
def test_study_split_equals_scikit_learn(split, count, test_size, sizes):
    names = official_like_names(split, count)
    expected_a, expected_b = train_test_split(names, test_size=test_size, random_state=42)
    a, b = study_split(names, test_size, 42)
    assert a == expected_a and b == expected_b  # same members, same order
    assert (len(a), len(b)) == sizes


@pytest.mark.parametrize("count,test_size,seed", [(37, 0.9, 42), (100, 0.75, 3), (2975, 0.8, 0), (11, 0.5, 42)])
def test_study_split_other_sizes_and_seeds(count, test_size, seed):
    names = official_like_names("train", count)
    assert study_split(names, test_size, seed) == tuple(train_test_split(names, test_size=test_size,
                                                                         random_state=seed))


def test_study_split_refuses_an_empty_part():
    with pytest.raises(ConfigError, match="empty part"):
        study_split(["a", "b", "c"], 0.9, 42)


def test_labeled_subsets_have_the_semi_supervised_sizes():
    names = [n[:-4] for n in official_like_names("train", 2975)]
    sizes = [len(labeled_subset(names, parse_fraction(f), 0)) for f in ("1/16", "1/8", "1/4", "1/2")]
    assert sizes == [186, 372, 744, 1488]
    first = labeled_subset(names, 0.125, seed=1)
    assert first == labeled_subset(names, 0.125, seed=1) != labeled_subset(names, 0.125, seed=2)
    assert set(first) <= set(names) and first == sorted(first)


def test_fraction_parsing():
    assert parse_fraction("1/8") == 0.125 and parse_fraction("0.25") == 0.25
    assert fraction_name("1/16") == "1_16"
    for bad in ("abc", "1/0", "2", "0"):
        with pytest.raises(ConfigError):
            parse_fraction(bad)
