"""The study's U-Net in Keras (written from the paper-protocol notes, section 2.1), timed on one training step.

Run with a Python that has tensorflow-cpu (requirements-peer.txt); benchmarks/train_step.py calls it in a
subprocess so that both frameworks are measured in one run on one machine. Prints one JSON line.

    python benchmarks/keras_peer.py --batch 32 --steps 6
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def build(num_classes: int = 35, alpha: float = 1.0, height: int = 208, width: int = 416):
    from tensorflow import keras
    from tensorflow.keras import layers

    w = [int(b * alpha) for b in (16, 32, 64, 128, 256)]
    conv = lambda c, k: layers.Conv2D(c, k, padding="same", activation="relu", kernel_initializer="he_normal")  # noqa: E731
    inputs = keras.Input((height, width, 3))
    x = layers.BatchNormalization()(conv(w[0], 1)(layers.Rescaling(1 / 255)(inputs)))
    skips = []
    for c in w[:4]:
        x = layers.BatchNormalization()(conv(c, 1)(conv(c, 3)(x)))
        skips.append(x)
        x = layers.MaxPooling2D()(x)
    x = layers.BatchNormalization()(conv(w[3], 1)(conv(w[4], 3)(x)))
    for c, c_next, skip in zip(w[3::-1], [w[2], w[1], w[0], w[0]], reversed(skips)):
        x = layers.Add()([layers.UpSampling2D()(x), skip])
        x = layers.BatchNormalization()(conv(c, 1)(x))
        x = layers.BatchNormalization()(conv(c_next, 1)(conv(c, 3)(x)))
    outputs = layers.Conv2D(num_classes, 1, activation="softmax", dtype="float32")(x)
    return keras.Model(inputs, outputs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    model = build(alpha=args.alpha)
    model.compile(optimizer=tf.keras.optimizers.AdamW(learning_rate=0.003, weight_decay=1e-4, epsilon=1e-7),
                  loss=tf.keras.losses.CategoricalCrossentropy())
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (args.batch, 208, 416, 3)).astype("float32")
    y = tf.one_hot(rng.integers(0, 35, (args.batch, 208, 416)), 35)
    for _ in range(2):
        model.train_on_batch(x, y)
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        model.train_on_batch(x, y)
        times.append(time.perf_counter() - start)
    times.sort()
    print(json.dumps({"framework": f"tensorflow {tf.__version__}", "params": model.count_params(),
                      "images_per_s": args.batch / times[len(times) // 2]}))


if __name__ == "__main__":
    main()
