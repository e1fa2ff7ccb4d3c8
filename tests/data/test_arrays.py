"""Array sets on disk: rows read on demand, several files read as one (StackedRows), and sets that link to the
rows of other files instead of copying them."""

import json

import numpy as np
import pytest

from cityscapes_lab.data.arrays import link_arrays, load_arrays
from cityscapes_lab.data.rows import RowArray, StackedRows
from cityscapes_lab.errors import DataError


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 256, (5, 3, 4, 3), dtype=np.uint8), rng.integers(0, 256, (4, 3, 4, 3), dtype=np.uint8)
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    return tmp_path, a, b


def test_stacked_rows_index_like_the_concatenated_array(files):
    folder, a, b = files
    stacked = StackedRows([RowArray(folder / "a.npy", np.array([4, 0, 2])), RowArray(folder / "b.npy")])
    expected = np.concatenate([a[[4, 0, 2]], b])
    assert stacked.shape == expected.shape and len(stacked) == 7 and stacked.ndim == 4
    assert np.array_equal(np.asarray(stacked), expected)
    for index in (0, 3, -1, slice(1, 6), slice(None, None, 2), np.array([6, 0, 3, 3, 1])):
        assert np.array_equal(stacked[index], expected[index])
    assert np.array_equal(stacked[np.array([5, 1]), 0], expected[np.array([5, 1]), 0])  # a tuple index
    assert np.array_equal(np.concatenate(list(stacked)).reshape(expected.shape), expected)
    for rows in (np.array([1, 2]), np.array([3, 4]), np.array([6, 1, 3])):  # within a part, and across parts
        assert np.array_equal(np.asarray(stacked.subset(rows)), expected[rows])
    np.save(folder / "c.npy", np.zeros((2, 5), np.uint8))
    with pytest.raises(ValueError, match="same row shape"):
        StackedRows([RowArray(folder / "a.npy"), RowArray(folder / "c.npy")])


def test_a_linked_set_reads_its_sources_rows_and_copies_nothing(files):
    folder, a, b = files
    labels_a, labels_b = a[..., 0].copy(), b[..., 0].copy()
    np.save(folder / "la.npy", labels_a)
    np.save(folder / "lb.npy", labels_b)
    link_arrays(folder / "sets" / "set", "set", [f"id{i}" for i in range(6)],
                [RowArray(folder / "a.npy", np.array([1, 3])), RowArray(folder / "b.npy")],
                [RowArray(folder / "la.npy", np.array([1, 3])), RowArray(folder / "lb.npy")])
    assert sorted(p.name for p in (folder / "sets" / "set").iterdir()) == ["ids.json", "links.json"]
    linked = load_arrays(folder / "sets" / "set")
    assert linked.ids == [f"id{i}" for i in range(6)]
    assert np.array_equal(np.asarray(linked.images), np.concatenate([a[[1, 3]], b]))
    assert np.array_equal(np.asarray(linked.labels), np.concatenate([labels_a[[1, 3]], labels_b]))
    assert np.array_equal(load_arrays(folder / "sets" / "set", lazy=False).images, np.asarray(linked.images))
    # the study folder moved together with the files it links to (relative paths), then one source changed
    (folder / "sets").rename(folder / "moved")
    assert len(load_arrays(folder / "moved" / "set")) == 6
    links = json.loads((folder / "moved" / "set" / "links.json").read_text())
    assert links["images"][0]["file"] == "../../a.npy"
    np.save(folder / "b.npy", b[:3])
    with pytest.raises(DataError, match="b.npy changed after this set was made from it"):
        load_arrays(folder / "moved" / "set")
    (folder / "b.npy").unlink()
    with pytest.raises(DataError, match="links to .*b.npy, which is missing"):
        load_arrays(folder / "moved" / "set")


def test_blanked_rows_read_zero_under_their_mask_and_link_like_any_part(files):
    from cityscapes_lab.data.rows import BlankedRows

    folder, a, b = files
    masks = np.random.default_rng(1).random((5, 3, 4)) > 0.5
    np.save(folder / "m.npy", masks)
    blanked = BlankedRows(RowArray(folder / "a.npy", np.array([4, 0, 2])), RowArray(folder / "m.npy")
                          .subset(np.array([0, 1, 2])))
    expected = np.where(masks[[0, 1, 2], ..., None], 0, a[[4, 0, 2]])
    assert blanked.shape == (3, 3, 4, 3) and np.array_equal(np.asarray(blanked), expected)
    assert np.array_equal(np.asarray(blanked.subset(np.array([2, 0]))), expected[[2, 0]])
    stacked = StackedRows([blanked, RowArray(folder / "b.npy")])
    assert np.array_equal(np.asarray(stacked.subset(np.array([4, 1]))), np.concatenate([b[[1]], expected[[1]]]))
    np.save(folder / "l.npy", a[..., 0])
    link_arrays(folder / "set", "set", [f"id{i}" for i in range(7)], [blanked, RowArray(folder / "b.npy")],
                [RowArray(folder / "l.npy", np.array([4, 0, 2])), RowArray(folder / "l.npy", np.array([0, 1, 2, 3]))])
    assert np.array_equal(np.asarray(load_arrays(folder / "set").images), np.concatenate([expected, b]))
    links = json.loads((folder / "set" / "links.json").read_text())
    assert links["images"][0]["blank"]["file"] == "../m.npy" and "blank" not in links["images"][1]
    with pytest.raises(ValueError, match="a mask row of the image's size"):
        BlankedRows(RowArray(folder / "a.npy"), RowArray(folder / "m.npy").subset(np.array([0, 1])))
