"""The study's semi-supervised approaches as rows of one table (notes 5.1): what the teachers are, how they
label the unlabeled images, what the students train on, and whether students grow wider with the generations.
One generation runner (``semisup.runner``) executes every row; the differences between approaches are the
settings below and nothing else."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Recipe:
    label: str  # name in tables and figures
    description: str
    base: str  # baseline whose top models teach generation 0 ("ldt" or "aldt")
    n_values: tuple[int, ...]  # teachers (IM, ME), input copies (IE), or EvalNets (EvalNet); 1 for one teacher
    rule: str  # ensemble | input_ensemble | teacher | im | evalnet_selection | consistency
    clean: bool  # train on the pseudo-labelled pairs as they are
    augmented: str  # "" | "one" (one augmented copy per pair) | "evalnet" (1-5 copies by EvalNet-IM score)
    labeled: str  # what labeled data joins the set: "labeled" (the originals) or "aldt" (the ALDT set)
    widen: bool  # students follow the generation schedule's width (1 -> 2) and augmentation strength
    evalnet: str = ""  # EvalNets to train first: "" | "miou" (EvalNet) | "im" (IM++) | "aug_im" (AIM++)
    generations: bool = True  # False: a single group per n (consistency loss)
    # the protocols it runs on; on the standard protocol the teachers and students are the supervised recipe's
    # networks (train.model, e.g. DeepLabV3+) and the IM pixels are ignored (semisup.im_label)
    protocols: tuple[str, ...] = ("paper",)


RECIPES: dict[str, Recipe] = {
    "cl": Recipe("Consistency Loss", "LDT's best model fine-tuned with a loss between two photometric views of "
                 "unlabeled images; n = augmentation strength (1 low, 2 mid, 3 high)", "ldt", (1, 2, 3),
                 "consistency", False, "", "labeled", False, generations=False),
    "me": Recipe("Model Ensemble", "the mean softmax of the n best LDT models (soft voting) labels each image",
                 "ldt", (2, 3, 4), "ensemble", True, "", "labeled", False),
    "ie": Recipe("Input Ensemble", "the best LDT model's mean softmax over n+1 photometric copies of each image",
                 "ldt", (3, 5, 7), "input_ensemble", True, "", "labeled", False),
    "ns": Recipe("Noisy Student", "the best model labels each image; students train on one augmented copy and grow "
                 "wider each generation", "ldt", (1,), "teacher", False, "one", "labeled", True),
    "im": Recipe("IM", "n teachers: labels where all agree, the inconsistency mask (class 0 or ignored, "
                 "blacked-out input) where they do not", "ldt", (2, 3, 4), "im", True, "", "labeled", False,
                 protocols=("paper", "standard")),
    "evalnet": Recipe("EvalNet", "EvalNets trained to predict a mask's per-class IoU choose, per image, the best "
                      "candidate mask; only masks above the threshold are kept", "ldt", (2, 3, 4),
                      "evalnet_selection", True, "", "labeled", False, evalnet="miou"),
    "im+": Recipe("IM+", "IM pairs of 2 teachers, one augmented copy each, wider students", "ldt", (2,), "im",
                  False, "one", "labeled", True),
    "im++": Recipe("IM++", "IM pairs of 2 teachers, 1 to 5 augmented copies each by an EvalNet-IM score", "ldt", (2,),
                   "im", False, "evalnet", "labeled", True, evalnet="im"),
    "aim+": Recipe("AIM+", "IM+ with ALDT teachers, plus the clean IM pairs and the ALDT set", "aldt", (2, 3, 4), "im",
                   True, "one", "aldt", True),
    "aim++": Recipe("AIM++", "IM++ with ALDT teachers and EvalNets, plus the clean IM pairs and the ALDT set", "aldt",
                    (2,), "im", True, "evalnet", "aldt", True, evalnet="aug_im"),
}


def required_baselines(approach: str) -> tuple[str, ...]:
    """The baselines an approach needs before it can start (its teachers; EvalNet data needs both)."""
    recipe = RECIPES[approach]
    if recipe.evalnet == "miou":
        return ("ldt", "aldt")
    return tuple(dict.fromkeys((recipe.base,) + (("aldt",) if recipe.labeled == "aldt" else ())))
