"""What `study --plan` counts besides the images seen in training: the pixels every task predicts (each training's
validations and scoring, the teachers' labels of each generation's set), from the rules that predict them."""

import pytest

from cityscapes_lab.config import load_config
from cityscapes_lab.data.prepared import load_prepared
from cityscapes_lab.engine.inference import InferenceProtocol
from cityscapes_lab.semisup.plan import plan_study
from cityscapes_lab.study.keys import StudyLayout

TINY = ["study.runs=1", "study.models=2", "study.top_k=2", "train.epochs=3", "train.batch_size=2", "train.threads=1",
        "semisup.students=2", "semisup.generations=1", "semisup.n=2", "study.eval_splits=val"]


def test_the_pixels_a_rule_predicts_of_one_image():
    """A 64x128 image: UniMatch V1's 48-wide windows every 32 are cut at the border (rows 48 + 32, columns
    3 x 48 + 32); shifted back, every window is whole (2 x 48 by 4 x 48); the centre crop is its own size; each
    scale counts its resized image, twice with flips."""
    v1 = InferenceProtocol("slide", (48, 48), (32, 32), combine="unimatch", edge="truncate", overlap="sum")
    shifted = InferenceProtocol("slide", (48, 48), (32, 32), combine="unimatch", edge="shift", overlap="sum")
    assert v1.pixels(64, 128) == (48 + 32) * (3 * 48 + 32)
    assert shifted.pixels(64, 128) == (2 * 48) * (4 * 48)
    assert InferenceProtocol().pixels(64, 128) == 64 * 128
    assert InferenceProtocol(score_crop=(32, 32)).pixels(64, 128) == 32 * 32
    assert InferenceProtocol(scales=(0.5, 1.0), flip=True).pixels(64, 128) == 2 * (32 * 64 + 64 * 128)


def plan(data, *extra, baselines=("ldt",), approaches=("im",)):
    return plan_study(list(baselines), list(approaches), load_config(overrides=TINY + list(extra)), data,
                      StudyLayout(data.root / "x"))


@pytest.mark.parametrize("extra, validations", [((), 3), (("train.val_every=2",), 2)])
def test_a_paper_trainings_validations_and_scoring(tiny_paper, extra, validations):
    """Val after each validated epoch (every one; with train.val_every 2 the second and the last), then its
    scoring of val, whole images of the prepared size; the IM set: both teachers label every unlabeled image, and
    val and test for the mask sizes of the report."""
    data = load_prepared(tiny_paper)
    width, height = data.size
    val, unlabeled, test = (len(data.splits[name]) for name in ("val", "train_unlabeled", "test"))
    nodes = {node.id: node for node in plan(data, *extra).nodes}
    for key in ("train ldt/run1/gen0/m00", "train im/run1/n2/gen0/m01"):
        assert nodes[key].predicted == (validations + 1) * val * width * height, key
    assert nodes["set im/run1/n2/gen0"].predicted == 2 * (unlabeled + val + test) * width * height
    assert nodes["rank ldt/run1/gen0"].predicted == 0


def test_a_standard_trainings_validations_under_the_rule(tiny_standard):
    """The standard protocol validates (train.val_rule auto) and scores under study.eval_rule: UniMatch V1's
    windows, 48 wide, on the 64x128 val images; with train.val_rule whole the validations see whole images."""
    data = load_prepared(tiny_standard)
    overrides = ["study.labeled_subset=1/2", "study.eval_rule=slide-unimatch-v1", "study.eval_window=48",
                 'train.model_options={"depths": [1, 1, 1, 2], "width": 8}', "train.model=deeplabv3plus_r50",
                 "semisup.im_label=ignore"]
    val, windows = len(data.splits["val"]), (48 + 32) * (3 * 48 + 32)
    ldt = {node.id: node for node in plan(data, *overrides).nodes}["train ldt/run1/gen0/m00"]
    assert ldt.predicted == (3 + 1) * val * windows
    whole = {node.id: node for node in plan(data, *overrides, "train.val_rule=whole").nodes}
    assert whole["train ldt/run1/gen0/m00"].predicted == 3 * val * 64 * 128 + val * windows


def test_the_evalnets_rows_trainings_and_selection(tiny_paper):
    """EvalNet, 2 models per baseline: the rows are each LDT and ALDT model's prediction of every labeled image
    plus its truth, and of val by min(evalnet_val_models, 2) of each; an EvalNet trains on the rows and validates
    on the val rows every epoch; the selection predicts with each LDT model and scores its masks with the n = 2
    EvalNets."""
    data = load_prepared(tiny_paper)
    pixels = data.size[0] * data.size[1]
    labeled, val, unlabeled = (len(data.splits[name]) for name in ("train_labeled", "val", "train_unlabeled"))
    nodes = {node.id: node for node in plan(data, "semisup.evalnet_epochs=4", baselines=("ldt", "aldt"),
                                            approaches=("evalnet",)).nodes}
    assert nodes["rows evalnet.nets/run1/gen0"].predicted == (2 * 2 * labeled + 2 * 2 * val) * pixels
    net = nodes["evalnet evalnet.nets/run1/gen0/m00"]
    assert net.predicted == 4 * (2 * 2 + 1) * val * pixels
    assert net.images == 4 * max(1, (2 * 2 + 1) * labeled // 2) * 2  # epochs x steps x batch 2
    assert nodes["set evalnet/run1/n2/gen0"].predicted == 2 * (1 + 2) * unlabeled * pixels


def test_the_im_plus_plus_rows_and_scored_pairs(tiny_paper):
    """IM++: the rows come from one prediction of every labeled and val image by each LDT model (the passes reuse
    it); its set's IM pairs are scored by the top-2 EvalNet-IM besides the 2 teachers' labels."""
    data = load_prepared(tiny_paper)
    pixels = data.size[0] * data.size[1]
    labeled, val, unlabeled, test = (len(data.splits[name])
                                     for name in ("train_labeled", "val", "train_unlabeled", "test"))
    nodes = {node.id: node for node in plan(data, "semisup.evalnet_train_loops=3", approaches=("im++",)).nodes}
    assert nodes["rows im++.nets/run1/gen0"].predicted == 2 * (labeled + val) * pixels
    epochs = load_config(overrides=TINY).semisup.evalnet_epochs
    assert nodes["evalnet im++.nets/run1/gen0/m00"].images == epochs * max(1, 3 * labeled // 2) * 2
    assert nodes["set im++/run1/n2/gen0"].predicted == ((2 + 2) * unlabeled + 2 * (val + test)) * pixels
