"""The notebook's Keras models, timed the way `bench train` times ours: run by `--keras PYTHON`, not imported.

    PYTHON keras_twin.py IMAGES.npy LABELS.npy SETTINGS_JSON

It builds and warms the model, prints `{"ready": KERAS_VERSION}`, then serves timing windows: for each line
`N` on its standard input it trains the next N batches and prints `{"seconds": ...}`, until its input ends.
`bench train` sends windows between its own pipelines' windows, so Keras and our steps share the machine's
slow and fast spells instead of meeting them one after the other.

It runs under an interpreter that has Keras 3 (any backend; TensorFlow is the notebook's) and needs nothing of
fashiondist, so it imports only the standard library, NumPy and Keras. The models are the notebook's own,
layer for layer, as Keras builds them: model_1 (`cnn`) and model_2 (`cnn-dropout`), Adam at 1e-3, sparse
categorical cross-entropy, float pixels scaled to [0, 1] in memory before timing, no augmentation (the
notebook had none, so Keras is spared the flip and shift our engine does). Timing: `model.fit` over
`warmup` batches (at least one: tracing and compilation), then one `model.fit` per window, timed from the
window's first batch's start to its last batch's end.
"""

from __future__ import annotations

import json
import sys
import time

POLICIES = {"no": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}


def _cnn_body(layers) -> list:
    """model_1: conv 32, pool, dense 64."""
    return [layers.Conv2D(32, 3, activation="relu"), layers.MaxPooling2D(2), layers.Flatten(),
            layers.Dense(64, activation="relu")]  # fmt: skip


def _cnn_dropout_body(layers) -> list:
    """model_2: three conv-pool-dropout stages (the first conv valid, the others same), dense 128."""
    return [
        layers.Conv2D(32, 3, activation="relu"), layers.MaxPooling2D(2), layers.Dropout(0.2),
        layers.Conv2D(64, 3, padding="same", activation="relu"), layers.MaxPooling2D(2), layers.Dropout(0.4),
        layers.Conv2D(128, 3, padding="same", activation="relu"), layers.MaxPooling2D(2), layers.Dropout(0.4),
        layers.Flatten(), layers.Dense(128, activation="relu"),
    ]  # fmt: skip


_BODIES = {"cnn": _cnn_body, "cnn-dropout": _cnn_dropout_body}
# our model names that have a Keras twin here (`bench train --keras` checks --models against it)
TWINS = tuple(_BODIES)


def build(name: str, num_classes: int, keras):
    if name not in _BODIES:
        raise SystemExit(f"keras_twin: no Keras twin for model {name!r}")
    # the softmax stays float32 under the mixed policies, as Keras's mixed-precision guide has it
    head = keras.layers.Dense(num_classes, activation="softmax", dtype="float32")
    return keras.Sequential([keras.Input((28, 28, 1)), *_BODIES[name](keras.layers), head])


def _step_clock(keras):
    """A callback that times from the first batch's start to the last batch's end: the steps, not `fit`'s set-up
    (its data adapter over the NumPy arrays) and tear-down, which a longer run would amortise."""

    class Clock(keras.callbacks.Callback):
        start = end = 0.0

        def on_train_batch_begin(self, batch, logs=None):
            if batch == 0:
                self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.end = time.perf_counter()

    return Clock()


def main(argv: list[str]) -> int:
    import numpy as np

    images_path, labels_path, settings = argv[1], argv[2], json.loads(argv[3])
    import keras

    keras.utils.set_random_seed(settings["seed"])
    keras.mixed_precision.set_global_policy(POLICIES[settings["precision"]])
    # at least one untimed batch: the first fit traces and compiles the step
    batch, warmup = settings["batch_size"], max(1, settings["warmup"])
    images = np.load(images_path)
    labels = np.load(labels_path).astype("int64")
    usable = len(images) // batch * batch  # whole batches only, so every window's batches are full
    x = images[:usable, :, :, None].astype("float32") / 255.0
    y = labels[:usable]
    model = build(settings["model"], settings["num_classes"], keras)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    position = 0

    def fit(batches: int) -> float:
        """Train the next `batches` batches (wrapping around the images); seconds of the batches themselves."""
        nonlocal position
        take = (np.arange(batches * batch) + position) % usable
        position = int((position + batches * batch) % usable)
        clock = _step_clock(keras)
        model.fit(x[take], y[take], batch_size=batch, epochs=1, shuffle=False, verbose=0, callbacks=[clock])
        return clock.end - clock.start

    fit(warmup)
    print(json.dumps({"ready": keras.__version__, "backend": keras.backend.backend()}), flush=True)
    for line in sys.stdin:
        print(json.dumps({"seconds": fit(int(line))}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
