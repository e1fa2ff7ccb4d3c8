"""Every key of `config show` changes what it names, or is refused with a clear error where it cannot apply.

The training settings are walked through each kind of training of the one loop (``engine.kinds``: study,
standard, consistency, evalnet), each run beside the same training with the default; the other settings through
the part of the pipeline that reads them (tiny studies, the ALDT set, the online augmentation). The first test
fails when a setting is added without a row here."""

from __future__ import annotations

import dataclasses
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cityscapes_lab.config import AugmentConfig, Config, OnlineAugmentConfig, TrainConfig, format_config, load_config
from cityscapes_lab.data.prepared import SplitArrays
from cityscapes_lab.engine import kinds
from cityscapes_lab.engine import train as engine
from cityscapes_lab.engine.runtime import Runtime, available_devices
from cityscapes_lab.engine.sources import OnlineAugmented
from cityscapes_lab.errors import ConfigError
from cityscapes_lab.models import build_model
from cityscapes_lab.models.evalnet import EvalNet
from cityscapes_lab.semisup.consistency import STRENGTHS
from cityscapes_lab.semisup.evalnet import EvalNetRows
from cityscapes_lab.study.keys import GroupKey

KINDS = ("study", "standard", "consistency", "evalnet")
BASE = TrainConfig(epochs=2, batch_size=4, threads=1)


def _split(name: str, n: int, classes: int, seed: int, ignore: bool = False) -> SplitArrays:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, (n, 16, 32), dtype=np.uint8)
    if ignore:
        labels[:, :2] = 255
    return SplitArrays(name, [f"{name}{i}" for i in range(n)], rng.integers(0, 256, (n, 16, 32, 3), dtype=np.uint8),
                       labels)


def _rows(n: int, seed: int) -> EvalNetRows:
    rng = np.random.default_rng(seed)
    return EvalNetRows(rng.integers(0, 256, (4, 16, 32, 3), dtype=np.uint8), np.arange(n) % 4,
                       rng.integers(0, 5, (n, 16, 32), dtype=np.uint8), rng.random((n, 5), dtype=np.float32),
                       (rng.random((n, 5)) > 0.5).astype(np.float32))


TRAIN5, VAL5, UNLABELED = _split("t", 8, 5, 0), _split("v", 4, 5, 1), _split("u", 8, 5, 2)
TRAIN19, VAL19 = _split("t", 8, 19, 3, ignore=True), _split("v", 4, 19, 4, ignore=True)
ROWS, VAL_ROWS = _rows(8, 5), _rows(4, 6)


def build(kind: str, config: TrainConfig, runtime: Runtime):
    """A tiny model and its training of ``kind``."""
    if kind == "evalnet":
        model = EvalNet(5, alpha=0.25)
        return model, kinds.evalnet(model, ROWS, VAL_ROWS, config, runtime, epochs=config.epochs, seed=0)
    model = build_model("unet_paper", 19 if kind == "standard" else 5, alpha=0.25)
    if kind == "study":
        return model, kinds.study(model, TRAIN5, VAL5, config, runtime, seed=0, num_classes=5, ignore_index=None,
                                  protocol="paper")
    if kind == "standard":
        return model, kinds.standard(model, TRAIN19, VAL19, Config(train=config, online=OnlineAugmentConfig(
            crop=[16, 32])), runtime, seed=0)
    return model, kinds.consistency(model, TRAIN5, UNLABELED, VAL5, STRENGTHS[2], config, runtime,
                                    epochs=config.epochs, seed=0)


@dataclass
class Outcome:
    """What a training did, as seen from outside the loop."""

    error: Exception | None = None
    history: list = field(default_factory=list)
    best_epoch: int = -1
    best_state: dict | None = None
    weights: dict = field(default_factory=dict)
    train_sizes: list = field(default_factory=list)  # batch size of each training forward pass
    eval_sizes: list = field(default_factory=list)
    channels_last: list = field(default_factory=list)  # of each training input
    dtypes: list = field(default_factory=list)  # of the first convolution's output in training
    recompute: list = field(default_factory=list)
    lrs: list = field(default_factory=list)  # learning rate of each optimiser step
    grad_norms: list = field(default_factory=list)  # global gradient norm at each optimiser step
    compiled: bool = False
    optimizer: str = ""  # the optimizer's class


_runs = itertools.count()


def run(kind: str, config: TrainConfig, tmp_path, poison: bool = False) -> Outcome:
    """Train ``kind`` with ``config`` and record what it did; ``poison`` makes every loss after the first NaN."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        return _run(kind, config, tmp_path, poison, monkeypatch)


def _run(kind: str, config: TrainConfig, tmp_path, poison: bool, monkeypatch) -> Outcome:
    seen = Outcome()
    original = engine.make_optimizer

    def recording_optimizer(*args):
        optimizer = original(*args)
        seen.optimizer = type(optimizer).__name__

        def before_step(opt, args, kwargs):
            seen.lrs.append(opt.param_groups[0]["lr"])
            grads = [p.grad.norm() for g in opt.param_groups for p in g["params"] if p.grad is not None]
            seen.grad_norms.append(float(torch.stack(grads).norm()))

        optimizer.register_step_pre_hook(before_step)
        return optimizer

    def fake_compile(module, *args, **kwargs):
        seen.compiled = True
        return module

    monkeypatch.setattr(engine, "make_optimizer", recording_optimizer)
    monkeypatch.setattr(torch, "compile", fake_compile)
    try:
        torch.manual_seed(0)
        runtime = Runtime.from_config(config)
        model, training = build(kind, config, runtime)
        if poison:
            calls = [0]

            def poisoned(step):
                def wrapped(model, batch, runtime):
                    calls[0] += 1
                    loss = step(model, batch, runtime)
                    return loss * float("nan") if calls[0] > 1 else loss
                return wrapped

            training = dataclasses.replace(training, phases=tuple(dataclasses.replace(p, step=poisoned(p.step))
                                                                   for p in training.phases))

        def before_forward(module, args):
            x = args[0]
            if module.training:
                seen.train_sizes.append(x.shape[0])
                seen.channels_last.append(x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())
                seen.recompute.append(module.recompute)
            else:
                seen.eval_sizes.append(x.shape[0])

        model.register_forward_pre_hook(before_forward)
        conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        conv.register_forward_hook(lambda m, i, out: seen.dtypes.append(out.dtype) if m.training else None)
        checkpoint = tmp_path / f"{kind}-{next(_runs)}.pt"  # a fresh one: an existing one would be resumed
        result = engine.train(model, training, config, runtime, checkpoint=checkpoint, show_progress=False)
        seen.history, seen.best_epoch, seen.best_state = result.history, result.best_epoch, result.best_state
        seen.weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    except (ConfigError, engine.TrainingDiverged) as exc:
        seen.error = exc
    return seen


def differ(a: dict, b: dict) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a)


def refused(pattern: str):
    def check(base: Outcome, changed: Outcome) -> None:
        assert isinstance(changed.error, ConfigError) and re.search(pattern, str(changed.error)), changed.error
    return check


def epochs(base, changed):
    assert len(base.history) == 2 and len(changed.history) == 3


def batch_size(base, changed):
    assert set(base.train_sizes) == {4} and set(changed.train_sizes) == {2}


def steps_per_epoch(base, changed):
    assert len(changed.lrs) * 2 == len(base.lrs)  # 1 step per pass instead of 2


def lr(base, changed):
    assert set(base.lrs) == {0.003} and set(changed.lrs) == {0.01} and differ(base.weights, changed.weights)


def schedule(base, changed):
    assert len(set(base.lrs)) == 1 and all(a > b for a, b in zip(changed.lrs, changed.lrs[1:]))


def warmup(base, changed):
    assert changed.lrs[:3] == pytest.approx([0.001, 0.002, 0.003]) and set(changed.lrs[3:]) == {0.003}


def weights_change(base, changed):
    assert base.error is None and changed.error is None and differ(base.weights, changed.weights)


def grad_clip(base, changed):
    assert max(base.grad_norms) > 1e-3 and max(changed.grad_norms) <= 1e-3 * 1.001


def val_every(base, changed):  # 2 of 2 epochs: validated after the second (the last) only
    assert len(changed.eval_sizes) * 2 == len(base.eval_sizes) and changed.best_epoch == 1
    assert len(changed.history[0]) < len(changed.history[1])  # the first epoch has no validation figures


def keep_last(base, changed):
    assert changed.best_epoch == 1 and not differ(changed.best_state, changed.weights)


def precision(base, changed):
    assert set(base.dtypes) == {torch.float32} and set(changed.dtypes) == {torch.bfloat16}


def channels_last(base, changed):
    assert all(base.channels_last) and not any(changed.channels_last)


def compiled(base, changed):
    assert changed.compiled and not base.compiled


def recompute(base, changed):
    assert not any(base.recompute) and all(changed.recompute)


def eval_batch_size(base, changed):
    assert max(base.eval_sizes) == 4 and max(changed.eval_sizes) == 3


def linear_rule(base, changed):  # batch 4 with a recipe made for batch 2: twice the learning rate
    assert set(base.lrs) == {0.003} and changed.lrs == pytest.approx([0.006] * len(base.lrs))


def sgd(base, changed):
    assert base.optimizer == "DecoupledAdamW" and changed.optimizer == "SGD"
    assert differ(base.weights, changed.weights)


#: key -> (value, check, the kinds where it does not apply and why)
ENGINE = {
    "train.epochs": (3, epochs),
    "train.batch_size": (2, batch_size),
    "train.steps_per_epoch": (1, steps_per_epoch),
    "train.lr": (0.01, lr),
    "train.schedule": ("poly", schedule),
    "train.warmup_steps": (3, warmup),
    "train.weight_decay": (0.05, weights_change),
    "train.weight_decay_rule": ("lr_scaled", weights_change),
    "train.adam_eps": (1e-3, weights_change),
    "train.grad_clip": (1e-3, grad_clip),
    "train.keep": ("last", keep_last),
    "train.val_every": (2, val_every),
    "train.precision": ("bf16", precision),
    "train.channels_last": (False, channels_last),
    "train.compile": (True, compiled),
    "train.recompute": ("on", recompute),
    "train.eval_batch_size": (3, eval_batch_size),
    "train.aux_weight": (0.2, refused("has no auxiliary head")),
    "train.lr_reference_batch": (2, linear_rule),
    "train.head_lr_multiplier": (10.0, refused("has no pretrained backbone")),
    "train.optimizer": ("sgd", sgd),
    "train.sync_bn": ("on", refused("SyncBatchNorm needs several processes on GPUs")),
}
NOT_APPLICABLE = {("train.aux_weight", "evalnet"): "the EvalNet is not the segmentation network it weights"}


@pytest.fixture(scope="module")
def base_outcomes(tmp_path_factory):
    return {kind: run(kind, BASE, tmp_path_factory.mktemp(kind)) for kind in KINDS}


def test_the_walk_covers_every_key_of_config_show():
    shown, section = set(), None
    for line in format_config(Config()).splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        elif section and " = " in line:
            shown.add(f"{section}.{line.split(' = ')[0]}")
    walked = set(ENGINE) | set(SPECIAL) | set(STUDY) | set(ALDT) | set(ONLINE)
    assert shown == walked, (shown - walked, walked - shown)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("key", sorted(ENGINE))
def test_a_training_setting_works_in_every_kind_of_training(key, kind, base_outcomes, tmp_path):
    if (key, kind) in NOT_APPLICABLE:
        return
    value, check = ENGINE[key]
    changed = run(kind, dataclasses.replace(BASE, **{key.split(".")[1]: value}), tmp_path)
    base = base_outcomes[kind]
    assert base.error is None, base.error
    if check.__name__ != "check":  # not a refusal
        assert changed.error is None, changed.error
    check(base, changed)


@pytest.mark.parametrize("kind", KINDS)
def test_nan_detection_once_per_epoch_at_each_step_or_off(kind, tmp_path):
    outcomes = {rule: run(kind, dataclasses.replace(BASE, nan_check=rule), tmp_path, poison=True)
                for rule in ("epoch", "step", "off")}
    assert re.search(r"became nan in steps 0\.\.1", str(outcomes["epoch"].error))
    assert re.search(r"became nan at step 1", str(outcomes["step"].error))
    # off: trained on to the end (the validation then decides: NaN scores never count as the best epoch)
    off = outcomes["off"]
    assert len(off.lrs) == 2 * 2 * (2 if kind == "consistency" else 1) and "became nan" not in str(off.error)


@pytest.mark.parametrize("kind", KINDS)
def test_the_adam_epsilon_rule(kind, tmp_path):
    keras = run(kind, dataclasses.replace(BASE, adam_epsilon_rule="keras"), tmp_path)
    torch_rule = run(kind, dataclasses.replace(BASE, adam_epsilon_rule="torch"), tmp_path)
    auto = run(kind, BASE, tmp_path)
    assert differ(keras.weights, torch_rule.weights)
    expected = torch_rule if kind == "standard" else keras  # auto: Keras' rule on the paper protocol
    assert not differ(auto.weights, expected.weights)


@pytest.mark.parametrize("kind", KINDS)
def test_fp16_and_missing_devices_are_refused_on_this_machine(kind, tmp_path):
    if "cuda:0" in available_devices():
        pytest.skip("this machine has a GPU: fp16 and cuda are valid here")
    refused("fp16 needs a CUDA GPU")(None, run(kind, dataclasses.replace(BASE, precision="fp16"), tmp_path))
    refused("no CUDA device")(None, run(kind, dataclasses.replace(BASE, device="cuda"), tmp_path))


def test_aux_weight_weights_the_auxiliary_head_of_a_network_that_has_one():
    from cityscapes_lab.models.registry import model_spec

    torch.manual_seed(0)
    model = build_model("hrnet_w48_ocr", 19, **model_spec("hrnet_w48_ocr").test_options).train()
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    labels = torch.randint(0, 19, (2, 64, 64))
    losses = {}
    for weight in (0.4, 0.2, 0.0):
        torch.manual_seed(1)  # the same dropout in every call
        step = kinds.cross_entropy_step(model, TrainConfig(aux_weight=weight), 255)
        losses[weight] = float(step(model, (images, labels), Runtime.cpu()).detach())
    main = losses[0.0]
    assert losses[0.4] - main == pytest.approx(2 * (losses[0.2] - main), rel=1e-4) and losses[0.2] > main


# --- settings read outside the loop ------------------------------------------------------------------------------

def test_model_and_alpha_choose_the_network_of_every_training():
    from cityscapes_lab.models.hrnet_ocr import HRNetOCR
    from cityscapes_lab.models.registry import training_model

    small, options = training_model(TrainConfig(alpha=0.5), 35)
    assert options == {"alpha": 0.5} and small.alpha == 0.5
    hrnet, options = training_model(TrainConfig(model="hrnet_w48_ocr"), 19)
    assert isinstance(hrnet, HRNetOCR) and options == {}
    with pytest.raises(ConfigError, match="train.alpha 0.5: hrnet_w48_ocr has no width multiplier"):
        training_model(TrainConfig(model="hrnet_w48_ocr", alpha=0.5), 19)
    with pytest.raises(ConfigError, match="unknown model 'nope'"):
        training_model(TrainConfig(model="nope"), 19)
    small_deeplab, options = training_model(TrainConfig(model="deeplabv3plus_r50",
                                                        model_options={"depths": [1, 1, 1, 1], "width": 8}), 19)
    assert options == {"depths": [1, 1, 1, 1], "width": 8} and small_deeplab.backbone.channels[0] == 32
    assert load_config(overrides=['train.model_options={"width": 8}']).train.model_options == {"width": 8}
    with pytest.raises(ConfigError, match="train.model_options"):
        load_config(overrides=["train.model_options=8"])


def test_threads_and_device(tiny_paper, tmp_path, monkeypatch):
    from cityscapes_lab.engine.runtime import cpu_threads, join_processes
    from cityscapes_lab.parallel import default_workers
    from cityscapes_lab.study.tasks import TrainingTask, execute

    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    for threads in (1, 2):
        task = TrainingTask(key=f"t{threads}", seed=0, train=dataclasses.asdict(TrainConfig(
            epochs=1, batch_size=2, threads=threads)), data=str(tiny_paper), train_set="train_labeled",
            out_dir=str(tmp_path / f"t{threads}"), eval_splits=("val",), show_progress=False)
        assert execute(task).status == "done"
    join_processes(TrainConfig(threads=1, device="cpu"))
    assert calls == [1, 2, 1]
    assert cpu_threads(0) == default_workers() and cpu_threads(0, processes=default_workers() + 1) == 1
    if "cuda:0" not in available_devices():
        with pytest.raises(ConfigError, match="no CUDA device"):
            Runtime.from_config(TrainConfig(device="cuda"))


def test_sync_bn_under_ddp_on_gpus_and_its_clash_with_recompute():
    """What train.sync_bn does where it applies (a runtime of 2 GPU processes, described: no GPU is used): the
    BatchNorms become SyncBatchNorm, unless train.sync_bn=off; with train.recompute on it is refused, since the
    recomputed pass would update SyncBatchNorm's statistics twice."""
    gpus = Runtime(torch.device("cuda"), world_size=2)
    model = build_model("deeplabv3plus_r50", 19, depths=(1, 1, 1, 1), width=8)
    converted = engine.sync_batch_norm(model, TrainConfig(), gpus)
    assert any(isinstance(m, nn.SyncBatchNorm) for m in converted.modules())
    kept = engine.sync_batch_norm(build_model("deeplabv3plus_r50", 19, depths=(1, 1, 1, 1), width=8),
                                  TrainConfig(sync_bn="off"), gpus)
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in kept.modules())
    model = build_model("deeplabv3plus_r50", 19, depths=(1, 1, 1, 1), width=8)
    model.recompute = True
    with pytest.raises(ConfigError, match="train.recompute on with SyncBatchNorm"):
        engine.sync_batch_norm(model, TrainConfig(), gpus)


def test_sgd_momentum_and_the_settings_that_belong_to_one_optimizer(tmp_path):
    still = run("standard", dataclasses.replace(BASE, optimizer="sgd", momentum=0.0), tmp_path)
    moving = run("standard", dataclasses.replace(BASE, optimizer="sgd"), tmp_path)
    assert still.optimizer == moving.optimizer == "SGD" and differ(still.weights, moving.weights)
    with pytest.raises(ConfigError, match="train.momentum applies to SGD only"):
        TrainConfig(momentum=0.5)
    for key, value in (("weight_decay_rule", "lr_scaled"), ("adam_eps", 1e-3), ("adam_epsilon_rule", "keras")):
        with pytest.raises(ConfigError, match=f"train.{key} applies to AdamW only"):
            TrainConfig(optimizer="sgd", **{key: value})


def test_ohem_keeps_the_hard_pixels_on_a_hand_made_example():
    from cityscapes_lab.engine.losses import ohem_cross_entropy

    # two classes, 2x3 pixels: the probability of each pixel's label is sigmoid(logit0 - logit1) for label 0
    probability = torch.tensor([[0.9, 0.6, 0.3], [0.8, 0.5, 0.95]])
    logits = torch.stack([torch.log(probability), torch.log(1 - probability)])[None]  # (1, 2, 2, 3)
    labels = torch.zeros((1, 2, 3), dtype=torch.long)
    labels[0, 1, 2] = 255  # ignored: never kept
    nll = -torch.log(probability)

    def expected(*pixels):
        return float(torch.stack([nll[p] for p in pixels]).mean())

    hard = [(0, 1), (0, 2), (1, 1)]  # probability <= 0.7
    assert float(ohem_cross_entropy(logits, labels, 255, 0.7, 2)) == pytest.approx(expected(*hard))
    # at least 4 kept: the threshold rises to the 4th smallest probability (0.8)
    assert float(ohem_cross_entropy(logits, labels, 255, 0.7, 4)) == pytest.approx(expected(*hard, (1, 0)))
    # no more counted pixels than min_kept: all of them
    assert float(ohem_cross_entropy(logits, labels, 255, 0.7, 5)) == pytest.approx(
        expected((0, 0), (0, 1), (0, 2), (1, 0), (1, 1)))


def test_the_ohem_loss_trains_and_is_refused_where_there_is_no_pixel_loss(base_outcomes, tmp_path):
    for kind in ("study", "standard", "consistency"):
        ohem = run(kind, dataclasses.replace(BASE, loss="ohem", ohem_min_kept=64), tmp_path)
        assert ohem.error is None and differ(base_outcomes[kind].weights, ohem.weights), kind
    refused("an EvalNet regresses scores")(None, run("evalnet", dataclasses.replace(BASE, loss="ohem"), tmp_path))
    for key, value in (("ohem_threshold", 0.5), ("ohem_min_kept", 10)):
        with pytest.raises(ConfigError, match=f"train.{key} applies to train.loss=ohem only"):
            TrainConfig(**{key: value})


class Backboned(nn.Module):
    """A toy network of the registry contract with a ``backbone`` (as DeepLabV3+)."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Conv2d(4, 19, 1)

    def forward(self, images):
        return self.head(torch.relu(self.backbone(images.float() / 255)))


def test_head_lr_multiplier_sets_the_rest_of_the_network_apart_from_the_backbone(tmp_path):
    config = dataclasses.replace(BASE, head_lr_multiplier=10.0, schedule="poly")
    model = Backboned()
    runtime = Runtime.from_config(config)
    training = kinds.standard(model, TRAIN19, VAL19, Config(train=config, online=OnlineAugmentConfig(crop=[16, 32])),
                              runtime, seed=0)
    rates = []
    original = engine.make_optimizer

    def recording(*args):
        optimizer = original(*args)
        optimizer.register_step_pre_hook(lambda opt, a, k: rates.append([g["lr"] for g in opt.param_groups]))
        return optimizer

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine, "make_optimizer", recording)
        engine.train(model, training, config, runtime, checkpoint=tmp_path / "last.pt", show_progress=False)
    groups = engine.parameter_groups(model, 10.0)
    assert [len(g["params"]) for g in groups] == [2, 2]  # backbone weight and bias; the head's
    assert rates[0] == pytest.approx([0.003, 0.03]) and all(head == pytest.approx(10 * b) for b, head in rates)
    assert rates[-1][0] < rates[0][0]  # the schedule scales both


def test_keep_freed_memory_is_applied_by_the_training_that_asks_for_it(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(engine, "keep_freed_memory", lambda: calls.append(1))
    run("study", BASE, tmp_path)
    assert calls == [1]
    run("study", dataclasses.replace(BASE, keep_freed_memory=False), tmp_path)
    assert calls == [1]


SPECIAL = {"train.keep_freed_memory", "train.epochs", "train.model", "train.alpha", "train.threads", "train.device", "train.nan_check",
           "train.adam_epsilon_rule", "train.momentum", "train.loss", "train.ohem_threshold", "train.ohem_min_kept",
           "train.model_options",
           # a GPU's copy of the training set, same batches: tests/engine/test_sources.py
           "train.device_data",
           # the standard protocol's study settings: walked in tests/study/test_standard_study.py
           "study.labeled_subset", "study.eval_rule", "study.eval_window",
           # the standard protocol's validation rule: tests/study/test_standard_study.py, tests/engine/test_train_cli.py
           "train.val_rule", "train.val_window"}


# --- the study's settings: tiny studies, each beside one with the default ----------------------------------------

TINY = ["study.runs=1", "study.models=2", "study.top_k=2", "train.epochs=1", "train.batch_size=2", "train.threads=1",
        "aldt.copies=1", "semisup.students=1", "semisup.generations=1", "semisup.n=2", "semisup.evalnets=1",
        "semisup.evalnet_epochs=1", "semisup.cl_epochs=1", "semisup.evalnet_train_loops=1",
        "semisup.evalnet_val_loops=1", "semisup.evalnet_val_models=1", "study.eval_splits=val"]


@dataclass
class Study:
    layout: object
    rows: list  # TrainingRow
    scores: dict  # key -> split -> metric -> value

    def members(self, approach: str, role: str = "models") -> list:
        return [r for r in self.rows if r.approach == approach and r.role == role]

    def arrays(self, name: str, what: str = "pairs"):
        from cityscapes_lab.data.arrays import load_arrays

        return load_arrays(self.layout.dataset(name) / what)

    def extra(self, name: str, array: str):
        from cityscapes_lab.data.arrays import load_extra

        return np.asarray(load_extra(self.layout.dataset(name) / "pairs", array))


_studies: dict = {}


def _students_set(study) -> Path:
    return study.layout.dataset("im/run1/n2/gen0") / "set"


def _rows(study) -> list[str]:
    """The EvalNets' row sets left in the study folder."""
    return sorted(p.name for p in study.layout.dataset("im++.nets/run1/gen0").iterdir() if p.is_dir())


@pytest.fixture
def study(tiny_paper, tmp_path_factory):
    """``study(approach, *settings)``: a finished tiny study (cached per approach and settings)."""
    from cityscapes_lab.semisup.study import run_study
    from cityscapes_lab.study.keys import StudyLayout
    from cityscapes_lab.study.store import ResultStore

    def make(approach: str, *settings: str) -> Study:
        key = (approach, settings)
        if key not in _studies:
            out = tmp_path_factory.mktemp("walk") / "study"
            run_study(tiny_paper, out, [approach], load_config(overrides=TINY + list(settings)), show_progress=False)
            with ResultStore(out / "results.sqlite") as store:
                rows = store.trainings()
                _studies[key] = Study(StudyLayout(out), rows, {r.key: store.scores(r.key) for r in rows})
        return _studies[key]

    return make


def label_batch_size(study):
    import cityscapes_lab.semisup.pseudo as pseudo

    seen, original = [], pseudo._logits

    def recording(models, images, runtime):
        seen.append(len(images))
        yield from original(models, images, runtime)

    patch = pytest.MonkeyPatch()
    patch.setattr(pseudo, "_logits", recording)
    try:
        changed = study("im", "semisup.label_batch_size=3")
    finally:
        patch.undo()
    assert seen and max(seen) == 3
    assert changed.scores == study("im").scores  # it does not change results


def _im_pairs(s):
    return s.arrays("im/run1/n2/gen0"), s.extra("im/run1/n2/gen0", "masks")


def _erode_or_dilate(study, setting):
    (_, base_masks), (_, masks) = _im_pairs(study("im")), _im_pairs(study("im", setting))
    assert not np.array_equal(base_masks, masks)


def block_input(study):
    pairs, masks = _im_pairs(study("im", "semisup.block_input=false"))
    base_pairs, base_masks = _im_pairs(study("im"))
    assert masks.any() and np.all(np.asarray(base_pairs.images)[base_masks] == 0)
    assert np.any(np.asarray(pairs.images)[masks] != 0)


def block_output(study):
    # where teachers disagree the label is the IM class anyway; it matters where a dilated mask covers agreement
    pairs, masks = _im_pairs(study("im", "semisup.im_dilate=5", "semisup.block_output=false"))
    assert masks.any() and np.any(np.asarray(pairs.labels)[masks] != 0)
    base_pairs, base_masks = _im_pairs(study("im", "semisup.im_dilate=5"))
    assert np.all(np.asarray(base_pairs.labels)[base_masks] == 0)


def im_label(study):
    # teacher: disagreeing pixels keep the first teacher's class (not the IM class 0); the input is still black
    pairs, masks = _im_pairs(study("im", "semisup.im_label=teacher"))
    assert masks.any() and np.any(np.asarray(pairs.labels)[masks] != 0)
    assert np.all(np.asarray(pairs.images)[masks] == 0)
    base_pairs, base_masks = _im_pairs(study("im"))
    assert np.array_equal(masks, base_masks) and np.all(np.asarray(base_pairs.labels)[base_masks] == 0)


def _set_size(s, group):
    return len(s.arrays(group, "set"))


IMPP = "im++/run1/n2/gen0"


def _evalnet_rows(s, approach, part):
    from cityscapes_lab.data.arrays import load_extra

    return len(load_extra(s.layout.dataset(f"{approach}.nets/run1/gen0") / part, "image_index"))


STUDY = {
    "study.runs": lambda study: {r.run for r in study("ldt", "study.runs=2").rows} == {1, 2},
    "study.models": lambda study: len(study("ldt", "study.models=3").rows) == 3 == len(study("ldt").rows) + 1,
    "study.top_k": lambda study: (study("ldt").layout.top(GroupKey("ldt", 1), 2).exists()
                                  and not study("ldt", "study.top_k=1").layout.top(GroupKey("ldt", 1), 2).exists()),
    "study.seed": lambda study: study("ldt", "study.seed=5").scores != study("ldt").scores,
    "study.eval_splits": lambda study: all(set(s) == {"val", "train_unlabeled"} for s in study(
        "ldt", "study.eval_splits=val,train_unlabeled").scores.values()),
    "study.full_resolution": lambda study: all("full_miou" in s["val"] for s in study(
        "ldt", "study.full_resolution=true").scores.values()),
    "study.save_predictions": lambda study: len(list((study("ldt", "study.save_predictions=true").layout.root
                                                      / "predictions").rglob("*.png"))) == 2 * 4,
    "study.keep_datasets": lambda study: (_students_set(study("im")).exists()
                                          and not _students_set(study("im", "study.keep_datasets=false")).exists()
                                          and _rows(study("im++")) == ["train", "val"]
                                          and _rows(study("im++", "study.keep_datasets=false")) == []),
    "semisup.generations": lambda study: {r.generation for r in study(
        "im", "semisup.generations=2", "semisup.students=2").members("im")} == {0, 1},
    "semisup.students": lambda study: len(study("im", "semisup.students=2").members("im")) == 2,
    "semisup.n": lambda study: {r.n for r in study("me", "study.models=3", "study.top_k=3",
                                                   "semisup.n=3").members("me")} == {3},
    "semisup.im_erode": lambda study: _erode_or_dilate(study, "semisup.im_erode=3") is None,
    "semisup.im_dilate": lambda study: _erode_or_dilate(study, "semisup.im_dilate=3") is None,
    "semisup.block_input": lambda study: block_input(study) is None,
    "semisup.block_output": lambda study: block_output(study) is None,
    "semisup.im_label": lambda study: im_label(study) is None,
    "semisup.student_epochs": lambda study: ({r.epochs for r in study("im", "semisup.student_epochs=2").members("im")},
                                             {r.epochs for r in study("im").members("im")}) == ({2}, {1}),
    "semisup.ie_cumulative": lambda study: not np.array_equal(
        np.asarray(study("ie").arrays("ie/run1/n3/gen0").labels),
        np.asarray(study("ie", "semisup.ie_cumulative=false").arrays("ie/run1/n3/gen0").labels)),
    # IM++ copies: 5 above threshold_high, fewer between the thresholds (these tiny EvalNets score about 0.5)
    "semisup.threshold_low": lambda study: _set_size(study("im++", "semisup.threshold_high=1.0"), IMPP) < _set_size(
        study("im++", "semisup.threshold_high=1.0", "semisup.threshold_low=0.0"), IMPP),
    "semisup.threshold_high": lambda study: _set_size(study("im++", "semisup.threshold_high=1.0"), IMPP) < _set_size(
        study("im++"), IMPP),
    "semisup.evalnets": lambda study: len(study("im++", "semisup.evalnets=2").members("im++", "evalnets")) == 2,
    "semisup.evalnet_epochs": lambda study: {r.epochs for r in study("im++", "semisup.evalnet_epochs=2").members(
        "im++", "evalnets")} == {2},
    "semisup.evalnet_train_loops": lambda study: _evalnet_rows(study("im++", "semisup.evalnet_train_loops=2"), "im++",
                                                               "train") == 2 * _evalnet_rows(study("im++"), "im++",
                                                                                             "train"),
    "semisup.evalnet_val_loops": lambda study: _evalnet_rows(study("im++", "semisup.evalnet_val_loops=2"), "im++",
                                                             "val") == 2 * _evalnet_rows(study("im++"), "im++", "val"),
    "semisup.evalnet_val_models": lambda study: _evalnet_rows(study("evalnet", "semisup.evalnet_val_models=2"),
                                                              "evalnet", "val") > _evalnet_rows(study("evalnet"),
                                                                                                "evalnet", "val"),
    "semisup.cl_epochs": lambda study: {r.epochs for r in study("cl", "semisup.cl_epochs=2").members("cl")} == {2},
    "semisup.label_batch_size": lambda study: label_batch_size(study) is None,
}


@pytest.mark.parametrize("key", sorted(STUDY))
def test_a_study_setting_changes_the_study(key, study):
    assert STUDY[key](study) is not False, key


# --- the ALDT set and the online augmentation -----------------------------------------------------------------

def _aldt(**changes):
    from cityscapes_lab.study.approaches import augmented_set

    return augmented_set(TRAIN5, dataclasses.replace(AugmentConfig(copies=2), **changes), seed=0)


ALDT = {"aldt.copies": {"copies": 3}, "aldt.contrast": {"contrast": [1.0, 1.0]},
        "aldt.brightness": {"brightness": [0.0, 0.0]}, "aldt.max_blur": {"max_blur": 0},
        "aldt.max_noise": {"max_noise": 0}}


@pytest.mark.parametrize("key", sorted(ALDT))
def test_an_aldt_setting_changes_the_aldt_set(key):
    base, changed = _aldt(), _aldt(**ALDT[key])
    if key == "aldt.copies":
        assert len(base) == 8 * 3 and len(changed) == 8 * 4
    else:
        assert not np.array_equal(np.asarray(base.images), np.asarray(changed.images))


ONLINE = {"online.scale": {"scale": [0.5, 0.5]}, "online.crop": {"crop": [16, 16]}, "online.flip": {"flip": False},
          "online.jitter": {"jitter": 0.0}}


@pytest.mark.parametrize("key", sorted(ONLINE))
def test_an_online_augmentation_setting_changes_the_batches(key):
    def batch(**changes):
        config = dataclasses.replace(OnlineAugmentConfig(crop=[16, 32]), **changes)
        source = OnlineAugmented(TRAIN19.images, TRAIN19.labels, config, seed=0)
        return [source.batch(np.arange(8), step, Runtime.cpu()) for step in range(4)]

    base, changed = batch(), batch(**ONLINE[key])
    if key == "online.crop":
        assert base[0][0].shape[-2:] == (16, 32) and changed[0][0].shape[-2:] == (16, 16)
    else:
        assert any(not torch.equal(a[0], b[0]) for a, b in zip(base, changed))
