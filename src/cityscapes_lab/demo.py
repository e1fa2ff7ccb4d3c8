"""The demo: the whole pipeline at reduced sizes on generated stand-in data, in a few minutes on a laptop CPU."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .data.prepare import PrepareOptions, prepare
from .data.synth import SynthOptions, synthesize

DISCLAIMER = ("The data are generated stand-ins in the Cityscapes format, not Cityscapes: the numbers show that "
              "the pipeline works and say nothing about Cityscapes.")


@dataclass(frozen=True)
class DemoSettings:
    """Reduced sizes: 1024x512 stand-ins prepare to 208x112 under the paper protocol (the study: 416x208)."""

    train: int = 120
    val: int = 40
    width: int = 1024
    height: int = 512
    seed: int = 0
    labeled_fraction: float = 0.1


@dataclass(frozen=True)
class DemoResult:
    raw: Path
    prepared: Path


def run_demo(out: Path, settings: DemoSettings = DemoSettings(), *, workers: int | None = None,
             log: Callable[[str], None] = lambda message: None) -> DemoResult:
    """Generate stand-in data into ``out/raw`` and prepare it with the paper protocol into ``out/prepared``.
    Each step is skipped when its output is already complete, so an interrupted demo continues."""
    out = Path(out)
    raw, prepared = out / "raw", out / "prepared"
    log(f"1/2 generating {settings.train + settings.val} stand-in frames ({settings.width}x{settings.height}) "
        f"in {raw}")
    synthesize(raw, SynthOptions(counts={"train": settings.train, "val": settings.val, "test": 0, "train_extra": 0},
                                 width=settings.width, height=settings.height, seed=settings.seed), workers=workers)
    log(f"2/2 preparing them with the paper protocol in {prepared}")
    prepare(raw, prepared, PrepareOptions(protocol="paper", labeled_fraction=settings.labeled_fraction),
            workers=workers)
    return DemoResult(raw, prepared)
