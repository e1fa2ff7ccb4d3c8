"""The study's original code, run as it is, timed per training step: the peer of benchmarks/train_step.py.

Nothing of the study is re-implemented here. This script imports the original repository's ``unet.get_unet``
and ``functions.train_multiclass`` (https://github.com/MichaelVorndran/InconsistencyMasks, read at commit
885fe43) and calls them the way the study's ``Cityscapes/02_Cityscapes_full_dataset.py`` does: the Cityscapes
settings of the original ``config.ini`` (416x208, 3 channels, 35 classes, alpha 1, relu, softmax, batch 32, LR
0.003, WD 1e-4), ``tf.keras.losses.CategoricalCrossentropy()``, and the original training function with its
tensorflow-addons AdamW, its metrics (accuracy and its MeanIoU, computed in every training step), its
``tf.data`` pipeline over a PNG folder (``parse_image_multiclass``: decode, one-hot masks, batch, repeat,
prefetch), ModelCheckpoint, and afterwards its reloading and scoring of the best model. Only the data and the
length are ours: a temporary PNG folder in the original's layout (``<split>/images/*.png`` beside
``<split>/masks/*.png``) holding ``--images`` random images and masks, and a copy of the original config.ini
with ``NUM_EPOCHS = 1`` in a temporary working directory (the original reads ``config.ini`` from the working
directory), so that the one epoch has ``--warmup`` + ``--steps`` steps. A Keras callback, added to the
original's own ``model.fit`` call, times every step; the median of the timed steps gives images/s. Prints one
JSON line.

The study's training script sets ``mixed_precision.set_global_policy('mixed_float16')`` for its GPU; on a CPU
the default here is float32 (``--policy mixed_float16`` reproduces the script's setting).

Set-up (the original needs tensorflow-addons, which supports TensorFlow up to 2.15 and Keras 2 only, so the peer
has its own environment; TensorFlow 2.15 needs Python 3.9 to 3.11):

    git clone https://github.com/MichaelVorndran/InconsistencyMasks /work/peer/InconsistencyMasks
    python3.11 -m venv .venv-peer && .venv-peer/bin/pip install -r requirements-peer.txt
    .venv-peer/bin/python benchmarks/keras_peer.py --original /work/peer/InconsistencyMasks [--steps 6]

``--original`` defaults to the environment variable IM_ORIGINAL.
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import hashlib
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REQUIRED = ("unet.py", "functions.py", "config.ini", "Cityscapes/Cityscapes_class_mapping.py")


def original_folder(path: str | None) -> Path:
    if not path:
        sys.exit("keras_peer: give --original DIR (or IM_ORIGINAL): a checkout of "
                 "https://github.com/MichaelVorndran/InconsistencyMasks")
    root = Path(path).resolve()
    missing = [name for name in REQUIRED if not (root / name).is_file()]
    if missing:
        sys.exit(f"keras_peer: {root} is not a checkout of the original repository (missing {', '.join(missing)})")
    return root


def write_split(folder: Path, count: int, height: int, width: int, classes: int, seed: int) -> None:
    """``count`` random RGB images and class-id masks (8-bit, one channel) with equal names, as the study's
    resize script leaves them."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for i in range(count):
        name = f"peer_{i:06d}_000019.png"
        cv2.imwrite(str(folder / "images" / name), rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        cv2.imwrite(str(folder / "masks" / name), rng.integers(0, classes, (height, width), dtype=np.uint8))


def keras_version() -> str:
    import keras

    return keras.__version__


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--original", default=os.environ.get("IM_ORIGINAL"),
                        help="folder with the original repository's scripts (default: $IM_ORIGINAL)")
    parser.add_argument("--steps", type=int, default=6, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed first steps (tracing)")
    parser.add_argument("--images", type=int, default=None, help="training images in the PNG folder "
                        "(default: one batch; the original's pipeline repeats the folder)")
    parser.add_argument("--alpha", type=float, default=None, help="default: the original config.ini's ALPHA")
    parser.add_argument("--batch", type=int, default=None, help="default: the original config.ini's BATCH_SIZE")
    parser.add_argument("--threads", type=int, default=None, help="TensorFlow intra-op threads (default: TF's)")
    parser.add_argument("--inter-threads", type=int, default=None, help="TensorFlow inter-op threads")
    parser.add_argument("--policy", default="float32", choices=["float32", "mixed_float16", "mixed_bfloat16"])
    args = parser.parse_args()
    root = original_folder(args.original)

    config = configparser.ConfigParser()
    config.read(root / "config.ini")
    if args.batch is not None:
        config["DEFAULT"]["BATCH_SIZE"] = str(args.batch)
    if args.alpha is not None:
        config["CITYSCAPES"]["ALPHA"] = repr(args.alpha)
    config["DEFAULT"]["NUM_EPOCHS"] = "1"
    city = config["CITYSCAPES"]
    height, width, channels = int(city["IMAGE_HEIGHT"]), int(city["IMAGE_WIDTH"]), int(city["IMAGE_CHANNELS"])
    classes, batch = int(city["NUM_CLASSES"]), int(config["DEFAULT"]["BATCH_SIZE"])

    with tempfile.TemporaryDirectory(prefix="keras-peer-") as tmp:
        work = Path(tmp)
        with open(work / "config.ini", "w") as handle:
            config.write(handle)
        for split, seed in (("train", 0), ("val", 1)):
            write_split(work / split, args.images or batch if split == "train" else batch, height, width, classes,
                        seed)
        os.chdir(work)  # the original's functions.py reads ./config.ini when it is imported
        sys.path[:0] = [str(root), str(root / "Cityscapes")]

        import tensorflow as tf

        if args.threads is not None:
            tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        if args.inter_threads is not None:
            tf.config.threading.set_inter_op_parallelism_threads(args.inter_threads)
        tf.keras.mixed_precision.set_global_policy(args.policy)
        with contextlib.redirect_stderr(io.StringIO()):  # tensorflow-addons' end-of-life warnings
            import functions  # the original's
            from Cityscapes_class_mapping import COLOR_TO_CLASS_MAPPING_CITYSCAPES
            from unet import get_unet

        model = get_unet(height, width, channels, classes, float(city["ALPHA"]), city["ACTIFU"],
                         city["ACTIFU_OUTPUT"])
        starts, times = {}, []

        class StepTimer(tf.keras.callbacks.Callback):
            def on_train_batch_begin(self, batch, logs=None):
                starts[batch] = time.perf_counter()

            def on_train_batch_end(self, batch, logs=None):
                times.append(time.perf_counter() - starts[batch])

        original_fit = model.fit

        def fit(*positional, callbacks=None, **keywords):  # the original's call, plus the timer
            return original_fit(*positional, callbacks=[*(callbacks or []), StepTimer()], verbose=0, **keywords)

        model.fit = fit
        train, val = str(work / "train" / "images"), str(work / "val" / "images")
        val_masks = str(work / "val" / "masks")
        quiet = io.StringIO()  # its progress bars and checkpoint messages
        with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            scores = functions.train_multiclass(
                train, val, val_masks, val, val_masks, val, val_masks, "peer", str(work / "peer.h5"), model,
                tf.keras.losses.CategoricalCrossentropy(), args.warmup + args.steps, height, width, channels,
                classes, COLOR_TO_CLASS_MAPPING_CITYSCAPES, str(work / "pred" / "val"), str(work / "pred" / "test"),
                str(work / "pred" / "unlabeled"))
    timed = times[args.warmup:]
    source = hashlib.sha256(b"".join((root / n).read_bytes() for n in ("unet.py", "functions.py"))).hexdigest()
    print(json.dumps({
        "framework": f"tensorflow {tf.__version__}, keras {keras_version()}",
        "code": f"original {root} (unet.py+functions.py sha256 {source[:12]})",
        "policy": args.policy, "batch": batch, "alpha": float(city["ALPHA"]),
        "threads": {"intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
                    "inter_op": tf.config.threading.get_inter_op_parallelism_threads()},
        "params": model.count_params(), "step_s": [round(t, 4) for t in timed],
        "images_per_s": batch / statistics.median(timed), "mIoU_val": scores[3]}))


if __name__ == "__main__":
    main()
