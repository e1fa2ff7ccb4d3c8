"""The published families of labeled subsets (cps, u2pl): shipped with the package, prepared exactly as published,
missing images refused in one line, and the seeded draw unchanged."""

import hashlib
import json
import os
import shutil
from importlib import resources
from pathlib import Path

import pytest

from cityscapes_lab import load_prepared
from cityscapes_lab.data.layout import OFFICIAL_CITIES, find_frame_id
from cityscapes_lab.data.prepare import PrepareOptions, make_splits, prepare, resolve_options
from cityscapes_lab.data.split_families import (DEFAULT_FAMILY, FAMILIES, family_ids, labeled_splits,
                                                published_ids)
from cityscapes_lab.data.splits import labeled_subset, parse_fraction
from cityscapes_lab.data.synth import MARKER, SynthOptions, synthesize, train_ids_from
from cityscapes_lab.data.synth.writer import frame_of, split_frames
from cityscapes_lab.errors import ConfigError, DataError
from oneline import expect_error, run_cli

# sha256 of each shipped list, as copied from the published split files: a changed list must fail here.
SHA256 = {
    ("cps", "1/30"): "d356a23daa743733be4afc4b4e5ce286ff4ad35b00a442266ea721713c78b219",
    ("cps", "1/16"): "dc2a06a86232bc32e733a8ae33e60807e9b017bf9dd5ce03b106426f3c96c496",
    ("cps", "1/8"): "2755fe0b6533339404a82029602157051c7be06d9d775ce445f5e5c43767d3bc",
    ("cps", "1/4"): "605f06bce9cb841e11db460b00e05c6edfdbd3e66a390f3ade7ef00172af4694",
    ("cps", "1/2"): "f071d8e32b163da41105b296af66975544141343a3af44449f74dd30a16facc9",
    ("u2pl", "1/16"): "c9b2d8a6a7290bcaf224c7cdec576682a677f7248a36dbfde498c55962a363fa",
    ("u2pl", "1/8"): "af350f9ea948a470ca54a5c0fa8c9829a30ce537825aa9d3de2d450a9bbcc839",
    ("u2pl", "1/4"): "d787c1a5a4d0e4b8dbff17803e79a1eb2b7e96516fd89a36a3eb1923a6f8bac9",
    ("u2pl", "1/2"): "245bcea234d21ace2a4f968503cd0662f88b1ace5096d8040e393b8c4c0eb2ca",
}
COUNTS = {"1/30": 100, "1/16": 186, "1/8": 372, "1/4": 744, "1/2": 1488}  # of the 2975 train images
EXTRA = 40  # generated train ids beyond the published ones: the unlabeled rest that no list names
SIZE = dict(width=64, height=32)


def shipped(family: str, fraction: str) -> bytes:
    """A list file as installed, read without the code under test."""
    node = resources.files("cityscapes_lab.data").joinpath("split_lists").joinpath(family)
    return node.joinpath(FAMILIES[family].lists[fraction]).read_bytes()


def shipped_ids(family: str, fraction: str) -> list[str]:
    return shipped(family, fraction).decode().splitlines()


def test_the_table_names_exactly_the_shipped_files():
    folder = resources.files("cityscapes_lab.data").joinpath("split_lists")
    on_disk = {(family.name, item.name) for family in folder.iterdir() if family.is_dir()
               for item in family.iterdir() if item.name.endswith(".txt")}
    in_table = {(name, file) for name, family in FAMILIES.items() for file in family.lists.values()}
    assert on_disk == in_table and set(SHA256) == {(n, f) for n, family in FAMILIES.items() for f in family.lists}
    assert DEFAULT_FAMILY == "cps" and not FAMILIES["seeded"].published
    assert FAMILIES["cps"].fractions == ("1/30", "1/16", "1/8", "1/4", "1/2")
    assert FAMILIES["u2pl"].fractions == ("1/16", "1/8", "1/4", "1/2")


@pytest.mark.parametrize("family,fraction", sorted(SHA256))
def test_shipped_lists_are_the_published_ones(family, fraction):
    data = shipped(family, fraction)
    assert hashlib.sha256(data).hexdigest() == SHA256[family, fraction]
    ids = data.decode().splitlines()
    assert len(ids) == COUNTS[fraction] and ids == sorted(set(ids)) == published_ids(family, fraction)
    for image_id in ids:
        frame = find_frame_id(image_id)
        assert frame is not None and str(frame) == image_id and frame.city in OFFICIAL_CITIES["train"]


def test_the_two_families_are_independent_draws():
    """As the benchmark's split files show: at 1/16 the families share 8 of 186 images."""
    assert len(set(shipped_ids("cps", "1/16")) & set(shipped_ids("u2pl", "1/16"))) == 8
    assert len(family_ids(["cps"])) == 1533 and len(family_ids(["u2pl"])) == 2028
    assert len(family_ids(["cps", "u2pl"])) == 2532


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """8 train and 2 val frames drawn at 64x32, whose files ``clone_download`` copies under other ids."""
    out = tmp_path_factory.mktemp("template") / "raw"
    synthesize(out, SynthOptions(counts={"train": 8, "val": 2, "test": 0, "train_extra": 0}, seed=1, **SIZE),
               workers=1)
    return out


def train_ids_of(raw: Path) -> list[str]:
    return sorted(p.name[: -len("_leftImg8bit.png")] for p in raw.glob("leftImg8bit/train/*/*_leftImg8bit.png"))


def clone_download(template: Path, out: Path, train_ids: list[str]) -> Path:
    """A stand-in download whose train split holds exactly ``train_ids``: the template's train frames' files
    linked in turn under each id, its val split and marker as they are. ``synth --train-ids`` draws every frame
    (about 60 ms each: a minute for 2,500); the splits only need the ids, and links take a second."""
    sources = train_ids_of(template)
    for number, image_id in enumerate(train_ids):
        source = sources[number % len(sources)]
        for path in template.glob(f"*/train/{source.split('_')[0]}/{source}_*"):
            target = out / path.parts[-4] / "train" / image_id.split("_")[0] / path.name.replace(source, image_id)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, target)
            except OSError:  # a filesystem without hard links
                shutil.copyfile(path, target)
    for top in ("leftImg8bit", "gtFine"):
        shutil.copytree(template / top / "val", out / top / "val")
    shutil.copyfile(template / MARKER, out / MARKER)
    return out


def generated_ids(count: int, avoid: set[str]) -> list[str]:
    """``count`` ids of train cities that are in no published list: the unlabeled rest of the download."""
    ids = (str(frame_of("train", i)) for i in range(10**6))
    return [i for i, _ in zip((i for i in ids if i not in avoid), range(count))]


@pytest.fixture(scope="module")
def raw_published(template, tmp_path_factory):
    """A stand-in download (64x32) whose train split holds every labeled id of both families plus EXTRA others."""
    named = family_ids(["cps", "u2pl"])
    ids = sorted(named + generated_ids(EXTRA, set(named)))
    return clone_download(template, tmp_path_factory.mktemp("published") / "raw", ids)


def test_stand_in_train_split_holds_the_published_ids_and_generated_extras(raw_published):
    train = train_ids_of(raw_published)
    named = set(family_ids(["cps", "u2pl"]))
    assert len(train) == len(named) + EXTRA and named <= set(train)
    assert all(find_frame_id(i).city in OFFICIAL_CITIES["train"] for i in set(train) - named)


@pytest.mark.parametrize("family", [None, "u2pl"], ids=["default-cps", "u2pl"])
def test_prepare_makes_each_family_exactly_as_published(family, raw_published, tmp_path, capsys):
    out = tmp_path / "prepared"
    args = ["prepare", "--raw", raw_published, "--out", out, "--protocol", "standard", "--workers", "2"]
    code, printed, err = run_cli(args + (["--split-family", family] if family else []), capsys)
    assert code == 0, err
    family = family or "cps"
    assert f"{family} split family" in printed
    data = load_prepared(out)
    train = data.splits["train"]
    assert train == train_ids_of(raw_published) and data.split_family == family
    made = sorted(name for name in data.splits if name.startswith("train_labeled_"))
    assert made == sorted(f"train_labeled_{f.replace('/', '_')}" for f in FAMILIES[family].lists)
    for fraction in FAMILIES[family].lists:
        suffix = fraction.replace("/", "_")
        labeled, unlabeled = data.splits[f"train_labeled_{suffix}"], data.splits[f"train_unlabeled_{suffix}"]
        assert labeled == shipped_ids(family, fraction)  # the published list, exactly
        assert unlabeled == sorted(set(train) - set(labeled)) and len(labeled) + len(unlabeled) == len(train)
        assert data.meta["counts"][f"train_labeled_{suffix}"] == COUNTS[fraction]
        assert data.meta["split_lists"][f"train_labeled_{suffix}"] == {
            "file": f"{family}/{suffix}.txt", "sha256": SHA256[family, fraction]}
    meta = json.loads((out / "meta.json").read_text())
    assert meta["split_family"] == family and meta["options"]["split_family"] == family
    subset = data.split("train_labeled_1_16")
    assert subset.ids == shipped_ids(family, "1/16") and subset.labels.shape == (186, 32, 64)


def test_a_missing_labeled_image_is_a_one_line_error_and_writes_nothing(template, tmp_path, capsys):
    listed = shipped_ids("cps", "1/30")
    present = listed[:41] + listed[42:]  # one published image left out
    raw = clone_download(template, tmp_path / "raw", sorted(present + generated_ids(11, set(listed))))
    assert len(train_ids_of(raw)) == 110 and listed[41] not in train_ids_of(raw)
    out = tmp_path / "prepared"
    base = ["prepare", "--raw", raw, "--out", out, "--protocol", "standard"]
    line = expect_error(base + ["--fractions", "1/30"], capsys, str(raw), "1 labeled image(s) of the cps split family",
                        listed[41], "synth --train-ids cps", "--split-family seeded")
    assert line.count(listed[41]) == 1
    missing = len(set(family_ids(["cps"])) - set(train_ids_of(raw)))  # every cps list by default
    assert missing > 1400
    expect_error(base, capsys, f"{missing} labeled image(s)", ", ...")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]  # no prepared folder, no .partial
    # The same rule for a real download names the complete download as the fix.
    with pytest.raises(DataError, match=r"missing .*complete download of leftImg8bit/train and gtFine/train"):
        labeled_splits("u2pl", ("1/16",), shipped_ids("u2pl", "1/16")[1:], source="/data/cityscapes")
    # ... and a seeded draw needs no particular image.
    code, printed, err = run_cli(base + ["--split-family", "seeded", "--fractions", "1/2"], capsys)
    assert code == 0 and "seeded split family" in printed, err
    assert len(load_prepared(out).splits["train_labeled_1_2"]) == 55


def test_split_family_is_refused_with_the_paper_protocol(template, tmp_path, capsys):
    out = tmp_path / "out"
    expect_error(["prepare", "--raw", template, "--out", out, "--protocol", "paper", "--split-family", "cps"],
                 capsys, "--split-family", "--protocol standard")
    with pytest.raises(ConfigError, match="--split-family applies to --protocol standard"):
        prepare(template, out, PrepareOptions(protocol="paper", split_family="u2pl"))
    assert list(tmp_path.iterdir()) == []


def test_options_of_a_published_family():
    assert resolve_options(PrepareOptions(protocol="standard")).split_family == "cps"
    assert resolve_options(PrepareOptions(protocol="standard")).fractions == FAMILIES["cps"].fractions
    assert resolve_options(PrepareOptions(protocol="paper")).split_family is None
    # written another way, a published fraction keeps the table's name (and so its split name)
    assert resolve_options(PrepareOptions(protocol="standard", fractions=("0.0625", "1/2"))).fractions == ("1/16",
                                                                                                           "1/2")
    with pytest.raises(ConfigError, match="u2pl family publishes 1/16, 1/8, 1/4, 1/2"):
        resolve_options(PrepareOptions(protocol="standard", split_family="u2pl", fractions=("1/30",)))
    with pytest.raises(ConfigError, match="--subset-seed applies to --split-family seeded"):
        resolve_options(PrepareOptions(protocol="standard", subset_seed=3))
    with pytest.raises(ConfigError, match="unknown split family 'unimatch'"):
        resolve_options(PrepareOptions(protocol="standard", split_family="unimatch"))


def test_seeded_family_is_the_previous_seeded_draw():
    train = sorted(str(frame_of("train", i)) for i in range(2975))
    ids = {"train": train, "val": ["frankfurt_000000_000019"]}
    splits = make_splits(PrepareOptions(protocol="standard", split_family="seeded", subset_seed=5), ids)
    for fraction in ("1/16", "1/8", "1/4", "1/2"):
        suffix = fraction.replace("/", "_")
        assert splits[f"train_labeled_{suffix}"] == labeled_subset(train, parse_fraction(fraction), 5)
        assert len(splits[f"train_labeled_{suffix}"]) == COUNTS[fraction]
        assert splits[f"train_unlabeled_{suffix}"] == sorted(set(train) - set(splits[f"train_labeled_{suffix}"]))
    assert "train_labeled_1_30" not in splits


def test_synth_train_ids(tmp_path):
    assert train_ids_from("cps") == tuple(family_ids(["cps"]))
    assert train_ids_from("u2pl,cps") == tuple(family_ids(["cps", "u2pl"]))
    listing = tmp_path / "list.txt"
    listing.write_text("leftImg8bit/train/ulm/ulm_000003_000019_leftImg8bit.png x\n\naachen_000001_000019\n")
    assert train_ids_from(str(listing)) == ("aachen_000001_000019", "ulm_000003_000019")
    listing.write_text("no id here\n")
    with pytest.raises(DataError, match="list.txt:1"):
        train_ids_from(str(listing))
    with pytest.raises(DataError, match="neither split families"):
        train_ids_from(str(tmp_path / "missing.txt"))
    named = ("aachen_000000_000019", "zurich_000500_000019")
    options = SynthOptions(counts={"train": 5}, train_ids=named)
    frames = [str(f) for f in split_frames("train", options)]
    assert len(frames) == 5 and set(named) <= set(frames) and frames == sorted(frames)
    assert frames.count("aachen_000000_000019") == 1  # a generated id equal to a named one is not repeated
    assert split_frames("val", options) == []
    assert split_frames("train", SynthOptions(counts={"train": 3})) == [frame_of("train", i) for i in range(3)]
    with pytest.raises(ConfigError, match="fewer than the 2 --train-ids"):
        synthesize(tmp_path / "raw", SynthOptions(counts={"train": 1}, train_ids=named))
    assert not (tmp_path / "raw").exists()


def test_synth_draws_the_named_train_ids(tmp_path, capsys):
    """The command line: --train-ids FILE, and a larger --train adds generated ids (the unlabeled rest)."""
    named = shipped_ids("u2pl", "1/16")[:3]
    listing = tmp_path / "ids.txt"
    listing.write_text("".join(f"leftImg8bit/train/{i.split('_')[0]}/{i}_leftImg8bit.png\n" for i in named))
    raw = tmp_path / "raw"
    code, printed, err = run_cli(["synth", raw, "--train-ids", listing, "--train", "5", "--val", "1", "--test", "0",
                                  "--size", "64x32", "--workers", "1"], capsys)
    assert code == 0 and "wrote 6 stand-in frames" in printed, err
    train = train_ids_of(raw)
    assert len(train) == 5 and set(named) <= set(train)
    for image_id in named:  # every file of the frame, under its id
        city = image_id.split("_")[0]
        for kind in ("labelIds.png", "instanceIds.png", "color.png", "polygons.json"):
            assert (raw / "gtFine" / "train" / city / f"{image_id}_gtFine_{kind}").exists()
    expect_error(["synth", tmp_path / "other", "--train-ids", listing, "--train", "2"], capsys,
                 "--train 2 is fewer than the 3 --train-ids")
    assert not (tmp_path / "other").exists()


def test_a_wheel_ships_the_lists(tmp_path):
    """The lists are package data: a wheel built from this checkout (as pip builds it, offline) holds every file
    of the table, so an installed package finds them as the editable install does."""
    import shutil
    import subprocess
    import sys
    import zipfile
    from pathlib import Path

    import cityscapes_lab

    root = Path(cityscapes_lab.__file__).resolve().parents[2]
    if not (root / "pyproject.toml").exists():
        pytest.skip("not run from a source checkout")
    tree = tmp_path / "tree"
    shutil.copytree(root / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, tree / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "-q", "-w", str(tmp_path / "dist"), str(tree)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("cityscapes_lab-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for family, info in FAMILIES.items():
        for fraction, file in info.lists.items():
            member = f"cityscapes_lab/data/split_lists/{family}/{file}"
            assert member in names
            assert hashlib.sha256(zipfile.ZipFile(wheel).read(member)).hexdigest() == SHA256[family, fraction]
