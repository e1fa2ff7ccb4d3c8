"""Every setting of a study in one place: typed defaults with their source, loaded from a TOML file plus
``--set section.key=value`` overrides, validated, printable (``cityscapes-lab config show``).

Defaults are the study's (paper-protocol notes; "config.ini X" names the study's key). Nothing here reads a file or
the environment at import; ``load_config`` does, when called.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import sys
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


def setting(default: Any, help: str) -> Any:  # noqa: A002 - the natural name
    """A config field with its one-line description (shown by ``config show``)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"help": help})  # one per instance
    return field(default=default, metadata={"help": help})


#: study.eval_rule: the evaluation rules of engine.prediction.PROTOCOLS that score a study's own networks
EVAL_RULES = ("whole", "slide-unimatch-v1", "slide-shifted", "center-crop")
#: semisup.im_label
IM_LABELS = ("auto", "im_class", "ignore", "teacher")


@dataclass(frozen=True)
class TrainConfig:
    """One training run of a segmentation network (notes 2.2)."""

    model: str = setting("unet_paper", "registry name of the network")
    model_options: dict = setting({}, "options of the network (its constructor's keywords, e.g. {backbone_weights = "
                                      "\"resnet50.pth\"} for DeepLabV3+'s ImageNet encoder; alpha: train.alpha)")
    alpha: float = setting(1.0, "width multiplier of the U-Net (config.ini ALPHA)")
    epochs: int = setting(50, "epochs (config.ini NUM_EPOCHS) of a segmentation training (EvalNets: "
                              "semisup.evalnet_epochs, consistency loss: semisup.cl_epochs)")
    batch_size: int = setting(32, "images per step, over all processes under DDP (config.ini BATCH_SIZE)")
    steps_per_epoch: int = setting(0, "steps per epoch (of each pass of an epoch); 0 = each training's own rule "
                                      "(the study: N // batch_size)")
    lr: float = setting(0.003, "peak learning rate (config.ini LR)")
    lr_reference_batch: int = setting(0, "the linear rule: the learning rate is train.lr x batch_size / this (the "
                                         "total batch the recipe's lr was set for; 0 = train.lr as it is)")
    head_lr_multiplier: float = setting(1.0, "learning rate of everything but the network's pretrained backbone "
                                             "(x train.lr; UniMatch: 1 on Cityscapes, 10 on Pascal)")
    optimizer: str = setting("adamw", "adamw (the study's, decoupled weight decay) or sgd (momentum, weight decay "
                                      "as an L2 term: the semi-supervised benchmark's)")
    momentum: float = setting(0.9, "SGD momentum (train.optimizer sgd)")
    schedule: str = setting("constant", "learning rate after the warm-up: constant (the study) or poly (power 0.9 "
                                        "to 0 at the last step)")
    warmup_steps: int = setting(0, "linear learning-rate warm-up over this many optimiser steps (0 = none)")
    weight_decay: float = setting(1e-4, "weight decay per step (config.ini WD)")
    weight_decay_rule: str = setting("decoupled", "decoupled: p <- p - wd*p whatever the learning rate (TFA, the "
                                                  "study); lr_scaled: p <- p - lr*wd*p (PyTorch's AdamW)")
    adam_eps: float = setting(1e-7, "Adam epsilon (the Keras default)")
    adam_epsilon_rule: str = setting("auto", "keras: epsilon added as Keras does (eps / sqrt(1 - b2^t) in "
                                             "PyTorch's form); torch: PyTorch's; auto = keras on the paper "
                                             "protocol, torch on the standard")
    grad_clip: float = setting(0.0, "clip the gradients' global L2 norm to this (0 = no clipping)")
    val_every: int = setting(1, "validate every N epochs and after the last one (the best epoch is chosen among "
                                "those); 1 = every epoch, as the study; the standard protocol's full-resolution val "
                                "can cost more than a short epoch")
    val_rule: str = setting("auto", "standard protocol: the evaluation rule of the validation that picks the best "
                                    "epoch (whole, slide-unimatch-v1, slide-shifted, center-crop); auto = in a "
                                    "study its study.eval_rule (the rule of its scores: UniMatch picks its best "
                                    "epoch by its sliding-window val), in `train` whole")
    val_window: int = setting(0, "the sliding window (or centre crop) of train.val_rule; 0 = the rule's own (with "
                                 "auto: study.eval_window)")
    keep: str = setting("best", "weights kept: best (the epoch with the best validation, strictly better wins, "
                                "as Keras' save_best_only) or last")
    nan_check: str = setting("epoch", "stop a training whose loss is NaN or infinite: epoch (one check per "
                                      "epoch, no per-step sync), step (at the first bad step), off")
    precision: str = setting("auto", "auto (bf16 autocast on a GPU, fp32 on the CPU), fp32, bf16 or fp16 (GPU only, "
                                     "with loss scaling)")
    channels_last: bool = setting(True, "channels-last memory layout (faster convolutions)")
    device_data: bool = setting(True, "GPU: hold the training set in device memory when it takes at most half of "
                                      "the memory this process's share leaves unused after the first step "
                                      "(batches are gathered there: no copy from the host per step; the same "
                                      "batches); off: copy each batch from the host")
    compile: bool = setting(False, "torch.compile the training step's model (slow first step, faster after)")
    recompute: str = setting("auto", "recompute activations in the backward pass: half the memory, ~10% more time; "
                                     "auto = on for the CPU with large batches (1M pixels and more); on; off")
    loss: str = setting("cross_entropy", "pixel loss of segmentation training: cross_entropy, or ohem (online hard "
                                         "example mining: only pixels whose true-class probability is below "
                                         "train.ohem_threshold, at least train.ohem_min_kept of them)")
    ohem_threshold: float = setting(0.7, "OHEM: pixels whose probability of their label is at most this are kept")
    ohem_min_kept: int = setting(200_000, "OHEM: at least this many pixels per process and batch are kept (the "
                                          "hardest)")
    sync_bn: str = setting("auto", "SyncBatchNorm under DDP: auto (on GPUs with several processes), on, off")
    aux_weight: float = setting(0.4, "weight of an auxiliary head's loss (HRNet-OCR, UperNet; the originals: 0.4); "
                                     "another value for a network without one is refused")
    eval_batch_size: int = setting(16, "images per forward pass when predicting (does not change results)")
    keep_freed_memory: bool = setting(True, "CPU: keep freed memory for the next step instead of handing it back "
                                            "(1.3-1.8x faster steps here, about 2 GB more peak memory; off: under "
                                            "3 GB); once on, it stays on in that process")
    threads: int = setting(0, "CPU threads for torch; 0 = this process's share of the cores it may use (the count "
                              "changes the rounding of CPU results, not their expected value)")
    device: str = setting("auto", "auto (cuda if available, else cpu), cpu, cuda or cuda:N")

    def __post_init__(self) -> None:
        _check(self.alpha > 0, "train.alpha", "must be > 0")
        _check(self.epochs >= 1, "train.epochs", "must be >= 1")
        _check(self.batch_size >= 1, "train.batch_size", "must be >= 1")
        _check(self.steps_per_epoch >= 0, "train.steps_per_epoch", "must be >= 0")
        _check(self.lr > 0, "train.lr", "must be > 0")
        _check(self.weight_decay >= 0, "train.weight_decay", "must be >= 0")
        _check(self.precision in ("auto", "fp32", "bf16", "fp16"), "train.precision",
               "must be auto, fp32, bf16 or fp16")
        _check(self.recompute in ("auto", "on", "off"), "train.recompute", "must be auto, on or off")
        _check(self.schedule in ("constant", "poly"), "train.schedule", "must be constant or poly")
        _check(self.warmup_steps >= 0, "train.warmup_steps", "must be >= 0")
        _check(self.weight_decay_rule in ("decoupled", "lr_scaled"), "train.weight_decay_rule",
               "must be decoupled or lr_scaled")
        _check(self.adam_eps > 0, "train.adam_eps", "must be > 0")
        _check(self.adam_epsilon_rule in ("auto", "keras", "torch"), "train.adam_epsilon_rule",
               "must be auto, keras or torch")
        _check(self.grad_clip >= 0, "train.grad_clip", "must be >= 0 (0: no clipping)")
        _check(self.keep in ("best", "last"), "train.keep", "must be best or last")
        _check(self.val_every >= 1, "train.val_every", "must be >= 1")
        _check(self.val_rule in ("auto", *EVAL_RULES), "train.val_rule", f"must be auto, {', '.join(EVAL_RULES)}")
        _check(self.val_window >= 0, "train.val_window", "must be >= 0 (0: the rule's own window)")
        _check(self.val_window == 0 or self.val_rule not in ("auto", "whole"), "train.val_window",
               "applies to a sliding or centre-crop train.val_rule; leave it at 0 for whole and auto")
        _check(self.nan_check in ("epoch", "step", "off"), "train.nan_check", "must be epoch, step or off")
        _check(self.aux_weight >= 0, "train.aux_weight", "must be >= 0")
        _check(self.eval_batch_size >= 1, "train.eval_batch_size", "must be >= 1")
        _check(self.threads >= 0, "train.threads", "must be >= 0")
        _check(self.lr_reference_batch >= 0, "train.lr_reference_batch", "must be >= 0 (0: no scaling)")
        _check(self.head_lr_multiplier > 0, "train.head_lr_multiplier", "must be > 0")
        _check(self.optimizer in ("adamw", "sgd"), "train.optimizer", "must be adamw or sgd")
        _check(0 <= self.momentum < 1, "train.momentum", "must be in [0, 1)")
        _check(self.loss in ("cross_entropy", "ohem"), "train.loss", "must be cross_entropy or ohem")
        _check(0 < self.ohem_threshold <= 1, "train.ohem_threshold", "must be in (0, 1]")
        _check(self.ohem_min_kept >= 0, "train.ohem_min_kept", "must be >= 0")
        _check(self.sync_bn in ("auto", "on", "off"), "train.sync_bn", "must be auto, on or off")
        defaults = type(self)
        if self.optimizer == "sgd":
            for key in ("weight_decay_rule", "adam_eps", "adam_epsilon_rule"):
                _check(getattr(self, key) == getattr(defaults, key), f"train.{key}",
                       "applies to AdamW only (train.optimizer sgd: weight decay is its L2 term); leave it at "
                       "its default")
        else:
            _check(self.momentum == defaults.momentum, "train.momentum",
                   "applies to SGD only; set train.optimizer=sgd, or leave it at its default")
        if self.loss != "ohem":
            for key in ("ohem_threshold", "ohem_min_kept"):
                _check(getattr(self, key) == getattr(defaults, key), f"train.{key}",
                       "applies to train.loss=ohem only; set it, or leave this at its default")


@dataclass(frozen=True)
class AugmentConfig:
    """The study's offline augmentation that makes the ALDT set (notes 4)."""

    copies: int = setting(9, "augmented copies per labeled image")
    contrast: list = setting([0.6, 1.4], "range of the brightness factor alpha (convertScaleAbs)")
    brightness: list = setting([-15.0, 15.0], "range of the brightness offset beta")
    max_blur: int = setting(1, "largest Gaussian blur radius r (kernel 2r+1), drawn from 0..max_blur")
    max_noise: int = setting(15, "integer noise in [-max_noise, max_noise-1] per pixel and channel")

    def __post_init__(self) -> None:
        _check(self.copies >= 1, "aldt.copies", "must be >= 1")
        for key in ("contrast", "brightness"):
            value = getattr(self, key)
            _check(isinstance(value, list) and len(value) == 2 and value[0] <= value[1], f"aldt.{key}",
                   "must be [low, high] with low <= high")
        _check(self.max_blur >= 0 and self.max_noise >= 0, "aldt.max_blur/max_noise", "must be >= 0")


@dataclass(frozen=True)
class OnlineAugmentConfig:
    """Augmentation drawn anew for every batch when training on the standard protocol, on the GPU if there is one."""

    scale: list = setting([0.5, 2.0], "range of the random rescaling factor")
    crop: list = setting([512, 1024], "random crop (height, width) after rescaling; padded where the image is smaller")
    flip: bool = setting(True, "horizontal flip with p = 0.5")
    jitter: float = setting(0.2, "photometric jitter: brightness, contrast and saturation factors in 1 +- jitter")

    def __post_init__(self) -> None:
        _check(isinstance(self.scale, list) and len(self.scale) == 2 and 0 < self.scale[0] <= self.scale[1],
               "online.scale", "must be [low, high] with 0 < low <= high")
        _check(isinstance(self.crop, list) and len(self.crop) == 2 and all(isinstance(c, int) and c >= 16
                                                                           for c in self.crop),
               "online.crop", "must be [height, width], each at least 16")
        _check(0 <= self.jitter < 1, "online.jitter", "must be in [0, 1)")


@dataclass(frozen=True)
class StudyConfig:
    """How many models, which seeds, what is evaluated and kept."""

    runs: int = setting(3, "independent runs of every approach")
    models: int = setting(10, "models per baseline group (FDT, LDT, ALDT)")
    top_k: int = setting(4, "best models of a group kept as named checkpoints (config.ini TOP_Ks)")
    seed: int = setting(0, "base of every derived seed (model init, data order, augmentation)")
    eval_splits: list = setting(["val", "test", "train_unlabeled"], "splits every trained model is scored on")
    full_resolution: bool = setting(False, "also score official metrics at the original resolution (slow)")
    save_predictions: bool = setting(False, "write predictions as official-format labelId PNGs")
    labeled_subset: str = setting("", "standard protocol: the labeled subset the study uses (1/16, 1/8, 1/4, 1/2 or "
                                      "1/30: prepare's train_labeled_1_16 ... and their complements); empty on the "
                                      "paper protocol, which has one")
    eval_rule: str = setting("whole", "standard protocol: how every trained model is scored (whole, "
                                      "slide-unimatch-v1, slide-shifted, center-crop; README: evaluation rules); "
                                      "the paper protocol scores whole images")
    eval_window: int = setting(0, "the sliding window (or centre crop) of study.eval_rule; 0 = the rule's own (801 "
                                  "or 769)")
    keep_datasets: bool = setting(True, "keep each generation's pseudo-labelled pairs and training set after its "
                                        "students finish, and the EvalNets' rows after they are trained (false: "
                                        "delete them then, keeping stats.json and the EvalNet selection; study "
                                        "--plan gives the disk either way)")

    def __post_init__(self) -> None:
        _check(self.runs >= 1, "study.runs", "must be >= 1")
        _check(self.models >= 1, "study.models", "must be >= 1")
        _check(self.top_k >= 1, "study.top_k", "must be >= 1")
        _check(isinstance(self.eval_splits, list) and "val" in self.eval_splits, "study.eval_splits",
               "must be a list that includes val")
        _check(self.eval_rule in EVAL_RULES, "study.eval_rule", f"must be one of {', '.join(EVAL_RULES)}")
        _check(self.eval_window >= 0, "study.eval_window", "must be >= 0 (0: the rule's own window)")
        _check(self.eval_window == 0 or self.eval_rule != "whole", "study.eval_window",
               "applies to a sliding or centre-crop study.eval_rule; leave it at 0 for whole")


@dataclass(frozen=True)
class SemisupConfig:
    """The semi-supervised approaches (notes 5): generations, students, teachers, thresholds, EvalNets."""

    generations: int = setting(5, "generations of students (the study: 5, plotted as 1..5)")
    students: int = setting(5, "students per group; consistency loss: repetitions per strength")
    student_epochs: int = setting(0, "epochs of a generation's students (0 = train.epochs, as the study); their set "
                                     "holds every unlabeled image, so on the standard protocol an epoch is long")
    n: list = setting([], "restrict the teacher counts n of every approach (empty: each approach's study values)")
    im_erode: int = setting(0, "IM erosion kernel (config.ini ERODE_KERNEL; 0 = off)")
    im_dilate: int = setting(0, "IM dilation kernel (config.ini DILATE_KERNEL; 0 = off)")
    block_input: bool = setting(True, "black out the input under the IM (config.ini BLOCK_INPUT)")
    block_output: bool = setting(True, "label the IM as class 0 (config.ini BLOCK_OUTPUT)")
    im_label: str = setting("auto", "the label of the pixels where IM teachers disagree: im_class (class 0, the "
                                    "paper protocol's), ignore (255, left out of the loss: the standard protocol's), "
                                    "teacher (the first teacher's class, nothing masked); auto = the protocol's")
    ie_cumulative: bool = setting(True, "input ensemble: each copy augments the previous one, no clean copy (study)")
    threshold_low: float = setting(0.372, "EvalNet score thresholds (config.ini MIN_THRESHOLD: the study's ALDT "
                                          "test mIoU)")
    threshold_high: float = setting(0.453, "config.ini MAX_THRESHOLD: the study's FDT test mIoU")
    evalnets: int = setting(5, "EvalNets trained per run")
    evalnet_epochs: int = setting(50, "EvalNet epochs (config.ini NUM_EPOCHS_EVALNET)")
    evalnet_train_loops: int = setting(10, "EvalNet-IM passes over the labeled images (config.ini NUM_LOOPS_TRAIN)")
    evalnet_val_loops: int = setting(3, "EvalNet-IM passes over val (config.ini NUM_LOOPS_VAL)")
    evalnet_val_models: int = setting(3, "EvalNet data: LDT and ALDT models that also predict on val")
    cl_epochs: int = setting(100, "consistency-loss fine-tuning epochs (config.ini NUM_EPOCHS_CS)")
    label_batch_size: int = setting(8, "images per teacher forward pass when pseudo-labelling")

    def __post_init__(self) -> None:
        _check(self.generations >= 1 and self.students >= 1, "semisup.generations/students", "must be >= 1")
        _check(self.student_epochs >= 0, "semisup.student_epochs", "must be >= 0 (0: train.epochs)")
        _check(isinstance(self.n, list) and all(isinstance(v, int) and v >= 1 for v in self.n), "semisup.n",
               "must be a list of positive integers")
        _check(0 <= self.threshold_low <= self.threshold_high <= 1, "semisup.threshold_low/high",
               "must satisfy 0 <= low <= high <= 1")
        _check(self.evalnets >= 1 and self.evalnet_epochs >= 1, "semisup.evalnets/evalnet_epochs", "must be >= 1")
        _check(self.im_label in IM_LABELS, "semisup.im_label", f"must be one of {', '.join(IM_LABELS)}")
        _check(self.cl_epochs >= 1 and self.label_batch_size >= 1, "semisup.cl_epochs/label_batch_size",
               "must be >= 1")


@dataclass(frozen=True)
class Config:
    train: TrainConfig = field(default_factory=TrainConfig)
    aldt: AugmentConfig = field(default_factory=AugmentConfig)
    study: StudyConfig = field(default_factory=StudyConfig)
    semisup: SemisupConfig = field(default_factory=SemisupConfig)
    online: OnlineAugmentConfig = field(default_factory=OnlineAugmentConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    def result_settings(self) -> dict[str, Any]:
        """``section.key`` -> value of every setting that can change a result (not those in NOT_RESULTS)."""
        return {name: value for name, value in flatten(self.to_dict()).items() if name not in NOT_RESULTS}

    def digest(self) -> str:
        """A short hash of the settings that can change results: the identity of a study's configuration."""
        return hashlib.sha256(json.dumps(self.result_settings(), sort_keys=True).encode()).hexdigest()[:16]

    def differences(self, previous: dict[str, dict[str, Any]]) -> list[str]:
        """``section.key: old -> new`` for every result setting that differs from ``previous`` (a ``to_dict``
        stored earlier; a setting it lacks, from an older version, counts as its default)."""
        before = {**Config().result_settings(), **flatten(previous)}
        return [f"{name}: {json.dumps(before[name])} -> {json.dumps(value)}"
                for name, value in self.result_settings().items() if before.get(name) != value]


#: Settings that do not change what a result measures (batch sizes of inference, extra output files, thread
#: counts, which change only the rounding of CPU results): a study continues with other values of these.
NOT_RESULTS = frozenset({"train.eval_batch_size", "train.threads", "study.save_predictions",
                         "semisup.label_batch_size", "study.keep_datasets", "train.device_data"})


def flatten(nested: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``{"train": {"lr": 0.003}}`` -> ``{"train.lr": 0.003}``."""
    return {f"{section}.{key}": value for section, values in nested.items() for key, value in values.items()}


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key} {message}")


def _sections() -> dict[str, type]:
    return {f.name: f.default_factory().__class__ for f in fields(Config)}


def _parse_value(key: str, text: str, kind: Any) -> Any:
    """A command-line value for a field of type ``kind``."""
    try:
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return text.lower() in ("true", "1", "yes")
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
        if kind is dict:
            value = json.loads(text)
            if not isinstance(value, dict):
                raise ValueError
            return value
        if kind is list:
            value = json.loads(text) if text.strip().startswith("[") else [v.strip() for v in text.split(",") if v.strip()]
            return [_number_or_text(v) for v in value]
        return text
    except (ValueError, json.JSONDecodeError):
        expected = "a JSON object, e.g. {\"width\": 8}" if kind is dict else getattr(kind, "__name__", kind)
        raise ConfigError(f"{key}={text!r}: expected {expected}") from None


def _number_or_text(value: Any) -> Any:
    if isinstance(value, str):
        for cast in (int, float):
            try:
                return cast(value)
            except ValueError:
                pass
    return value


def _apply(config: Config, updates: dict[str, dict[str, Any]], source: str) -> Config:
    sections = _sections()
    for section, values in updates.items():
        if section not in sections:
            raise ConfigError(f"{source}: unknown section [{section}]; sections are: {', '.join(sections)}")
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: [{section}] must be a table of settings")
        current = getattr(config, section)
        hints = typing.get_type_hints(type(current))
        known = {f.name for f in fields(current)}
        changes = {}
        for key, value in values.items():
            if key not in known:
                raise ConfigError(f"{source}: unknown setting {section}.{key}; {section} has: {', '.join(sorted(known))}")
            kind = hints[key]
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not (isinstance(value, kind) and not (kind is int and isinstance(value, bool))):
                raise ConfigError(f"{source}: {section}.{key} = {value!r} is not a {kind.__name__}")
            changes[key] = value
        config = dataclasses.replace(config, **{section: dataclasses.replace(current, **changes)})
    return config


def _read_toml(path: Path) -> dict[str, Any]:
    """A settings file as TOML: UTF-8 text (a byte-order mark at its start is allowed)."""
    try:
        raw = path.read_bytes()
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder; pass --config a TOML settings file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror}); check the path") from None
    if b"\0" in raw:
        raise ConfigError(f"{path}: is a binary file, not TOML text; pass a settings file such as the one "
                          "`cityscapes-lab config show > settings.toml` writes")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: is not UTF-8 text (byte 0x{raw[exc.start]:02x} at position {exc.start}); save "
                          "it as UTF-8") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc}); fix the file") from None


def load_config(path: Path | str | list | tuple | None = None, overrides: list[str] = (),
                base: Config | None = None) -> Config:
    """Defaults (or ``base``), then the TOML file ``path`` (or several, each overriding the ones before), then
    ``section.key=value`` overrides; validated."""
    config = base or Config()
    for one in ([] if path is None else [path] if isinstance(path, (str, Path)) else path):
        config = _apply(config, _read_toml(Path(one)), str(one))
    updates: dict[str, dict[str, Any]] = {}
    for item in overrides:
        name, sep, text = item.partition("=")
        section, dot, key = name.strip().partition(".")
        if not sep or not dot:
            raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. train.epochs=5")
        sections = _sections()
        if section not in sections:
            raise ConfigError(f"--set {item!r}: unknown section {section!r}; sections are: {', '.join(sections)}")
        hints = typing.get_type_hints(sections[section])
        if key not in hints:
            known = ", ".join(sorted(f.name for f in fields(sections[section])))
            raise ConfigError(f"--set {item!r}: unknown setting {section}.{key}; {section} has: {known}")
        updates.setdefault(section, {})[key] = _parse_value(name, text.strip(), hints[key])
    return _apply(config, updates, "--set")


def format_config(config: Config) -> str:
    """TOML text of every setting with its description: ``config show``; loadable by ``load_config``."""
    lines = [f"# cityscapes-lab configuration (digest {config.digest()})"]
    for section in fields(config):
        lines.append(f"\n[{section.name}]")
        value = getattr(config, section.name)
        for f in fields(value):
            lines.append(f"{f.name} = {toml_value(getattr(value, f.name))}  # {f.metadata.get('help', '')}")
    return "\n".join(lines) + "\n"


def toml_value(value: Any) -> str:
    """A setting's value as TOML (JSON's form for scalars and lists; tables inline, ``{key = value}``)."""
    if isinstance(value, dict):
        items = [f"{key if key.replace('_', '').replace('-', '').isalnum() else json.dumps(key)} = {toml_value(v)}"
                 for key, v in value.items()]
        return "{" + ", ".join(items) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(value)
