"""The kinds of training, each a few lines that choose a data source, a step function and a validation rule for
the one loop (``engine.train.train``):

=================  ======================================  ==============================  ==========================
kind               phases of an epoch (source, step)       validation, best epoch          epochs
=================  ======================================  ==============================  ==========================
``study``          arrays, cross-entropy (+ aux heads)     soft IoU on val (the study's;   train.epochs
                                                           official mIoU off the paper
                                                           protocol), highest
``standard``       online augmentation (full batches),     official mIoU on val (whole     train.epochs
                   cross-entropy with 255 ignored (+ aux   or train.val_rule), highest
                   heads)
``consistency``    labeled arrays, cross-entropy; then     cross-entropy on val after      semisup.cl_epochs
                   view pairs, consistency loss            each pass, lowest
``evalnet``        EvalNet rows, MSE + BCE                 MSE + BCE on val rows, lowest   semisup.evalnet_epochs
=================  ======================================  ==============================  ==========================
"""

from __future__ import annotations

import math

from torch import nn

from ..config import Config, TrainConfig
from ..data.augment import AugmentParams
from ..data.prepared import SplitArrays
from ..errors import ConfigError
from ..labels import IGNORE_INDEX
from ..seeds import derive_seed
from .inference import InferenceProtocol
from .prediction import rule_protocol
from .runtime import Runtime
from .sources import ArraySource, EvalNetBatches, OnlineAugmented, ViewPairs
from .steps import Consistency, CrossEntropy, EvalNetLoss, has_aux_head
from .train import Phase, Training, Validation
from .validation import evalnet_figures, mean_cross_entropy, official_miou, validation_soft_iou


def cross_entropy_step(model: nn.Module, config: TrainConfig, ignore_index: int | None) -> CrossEntropy:
    """Cross-entropy, with train.aux_weight for a network that has an auxiliary head (another value than the
    default for one that has none is refused: it would be ignored)."""
    ohem = (config.ohem_threshold, config.ohem_min_kept) if config.loss == "ohem" else None
    if has_aux_head(model):
        return CrossEntropy(ignore_index, config.aux_weight, ohem)
    if config.aux_weight != TrainConfig.aux_weight:
        raise ConfigError(f"train.aux_weight {config.aux_weight}: {type(model).__name__} has no auxiliary head; "
                          "leave train.aux_weight at its default")
    return CrossEntropy(ignore_index, ohem=ohem)


def study(model: nn.Module, train: SplitArrays, val: SplitArrays, config: TrainConfig, runtime: Runtime, *,
          seed: int, num_classes: int, ignore_index: int | None, protocol: str) -> Training:
    """The study's training: its reshuffled stream over in-memory arrays, N // batch steps per epoch, the best
    epoch by the soft IoU on val (paper protocol) or the official mIoU."""
    if protocol == "paper":
        measure = lambda m: {"val_score": validation_soft_iou(m, val.images, val.labels, num_classes,  # noqa: E731
                                                              runtime)}
    else:
        measure = lambda m: {"val_score": official_miou(m, val, protocol, runtime)}  # noqa: E731
    phase = Phase(ArraySource(train.images, train.labels), cross_entropy_step(model, config, ignore_index), seed,
                  max(1, len(train) // runtime.batch_size))
    return Training((phase,), Validation(measure, "val_score"), config.epochs, keras_epsilon=protocol == "paper")


def validation_setting(config: TrainConfig, study_rule: str = "whole", study_window: int = 0) -> tuple[str, int]:
    """(rule name, window) of the standard protocol's validation: train.val_rule and train.val_window, or with
    auto the rule and window the study scores its models with, so that the best epoch is the best under the rule
    reported."""
    if config.val_rule == "auto":
        return study_rule, study_window
    return config.val_rule, config.val_window


def validation_rule(config: TrainConfig, model_name: str, study_rule: str = "whole",
                    study_window: int = 0) -> InferenceProtocol | None:
    """The evaluation rule of the standard protocol's validation (``validation_setting``) for a registry model;
    None for whole images."""
    return rule_protocol(model_name, *validation_setting(config, study_rule, study_window))


def standard(model: nn.Module, train: SplitArrays, val: SplitArrays, config: Config, runtime: Runtime, *,
             seed: int, protocol: str = "standard", val_rule: InferenceProtocol | None = None) -> Training:
    """The standard protocol: online augmentation on the device, 255 ignored, official mIoU on val (whole images,
    or under ``val_rule``: ``validation_rule``)."""
    phase = Phase(OnlineAugmented(train.images, train.labels, config.online, seed),
                  cross_entropy_step(model, config.train, IGNORE_INDEX), seed,
                  max(1, len(train) // runtime.batch_size), drop_last=True)
    measure = lambda m: {"val_miou": official_miou(m, val, protocol, runtime, val_rule)}  # noqa: E731
    return Training((phase,), Validation(measure, "val_miou"), config.train.epochs, keras_epsilon=False)


def consistency(model: nn.Module, labeled: SplitArrays, unlabeled: SplitArrays, val: SplitArrays,
                views: AugmentParams, config: TrainConfig, runtime: Runtime, *, epochs: int, seed: int) -> Training:
    """Consistency-loss fine-tuning (notes 5.3): a supervised pass over the labeled images, then a pass over
    the unlabeled ones pulling the softmax of two photometric views together; the weights with the lowest val
    cross-entropy, checked after each pass."""
    if runtime.world_size > 1:
        raise ConfigError("consistency-loss fine-tuning runs in one process (its step has two forward passes, "
                          "which DistributedDataParallel does not allow); start it without torchrun")
    batches = lambda split: math.ceil(len(split) / runtime.batch_size)  # noqa: E731 - every image once per pass
    phases = (Phase(ArraySource(labeled.images, labeled.labels), cross_entropy_step(model, config, None),
                    derive_seed(seed, "labeled"), batches(labeled), "labeled_loss"),
              Phase(ViewPairs(unlabeled.images, unlabeled.ids, views, seed), Consistency(),
                    derive_seed(seed, "unlabeled"), batches(unlabeled), "consistency_loss"))
    measure = lambda m: {"val_loss": mean_cross_entropy(m, val, runtime)}  # noqa: E731
    return Training(phases, Validation(measure, "val_loss", higher_is_better=False, after_each_phase=True), epochs,
                    keras_epsilon=True)


def evalnet(model: nn.Module, rows, val_rows, config: TrainConfig, runtime: Runtime, *, epochs: int,
            seed: int) -> Training:
    """An EvalNet (notes 5.8): MSE on the IoU targets + BCE on detection, rows // batch steps per epoch, the
    epoch with the lowest validation loss."""
    if config.loss != TrainConfig.loss:
        raise ConfigError(f"train.loss {config.loss}: an EvalNet regresses scores, it has no pixel loss; leave "
                          "train.loss at its default for EvalNets")
    phase = Phase(EvalNetBatches(rows), EvalNetLoss(), seed, max(1, len(rows) // runtime.batch_size))
    measure = lambda m: evalnet_figures(m, val_rows, runtime)  # noqa: E731
    return Training((phase,), Validation(measure, "total_loss", higher_is_better=False), epochs, keras_epsilon=True)


#: every kind of training, by name
KINDS = {"study": study, "standard": standard, "consistency": consistency, "evalnet": evalnet}
