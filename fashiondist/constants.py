"""Torch-free facts shared by every stage: image shape, class names, normalisation, CSV column names."""

from __future__ import annotations

import enum

IMAGE_HEIGHT = 28
IMAGE_WIDTH = 28
IMAGE_CHANNELS = 1
# C, H, W as the models and the ONNX contract take it
IMAGE_SHAPE = (IMAGE_CHANNELS, IMAGE_HEIGHT, IMAGE_WIDTH)
NUM_PIXELS = IMAGE_HEIGHT * IMAGE_WIDTH  # 784 pixel columns in a competition CSV
PIXEL_MAX = 255

# Fashion-MNIST's 60k training images, on the 0..255 pixel scale (0.2860 and 0.3530 on the 0..1 scale).
PIXEL_MEAN = 72.9404
PIXEL_STD = 90.0212

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

# Competition CSV: `Id, Label, <784 pixels>` for training, `Id, <784 pixels>` for test. Pixels are read by
# position, never by name: the competition's train file named them 1..784 and its test file 0..783.
ID_COLUMN = "Id"
LABEL_COLUMN = "Label"
SUBMISSION_COLUMNS = (ID_COLUMN, LABEL_COLUMN)

# ONNX contract: uint8 `pixels` [N, 1, 28, 28] in (N dynamic), float32 `probs` [N, K] out; a client needs
# nothing but the file (inference/session.py checks it, export/ writes it).
ONNX_INPUT_NAME = "pixels"
ONNX_OUTPUT_NAME = "probs"


def class_names_for(num_classes: int) -> tuple[str, ...]:
    """Fashion-MNIST's names for 10 classes; plain "0".."K-1" for any other relabelling (the 5-class CSV)."""
    if num_classes == len(FASHION_MNIST_CLASSES):
        return FASHION_MNIST_CLASSES
    return tuple(str(k) for k in range(num_classes))


# Images per onnxruntime call: big enough to amortise the call, small enough for the activations to stay in
# cache. Measured for cnn-dropout on 2 cores, 10k-row testX.csv end to end: 1.17-1.20 s at 64-128 against
# 1.33 s at 256 and 1.37-1.48 s at 1024 and 4096.
INFER_BATCH_SIZE = 128


class Tta(str, enum.Enum):
    """Test-time augmentation: what the exported graph averages (also `fashiondist.config.Tta`)."""

    NONE = "none"
    FLIP = "flip"  # average the image and its horizontal mirror
    # flip, and both moved one pixel up, down, left and right (zero fill, as the training shift): 10 views
    FLIP_SHIFT = "flip-shift"
