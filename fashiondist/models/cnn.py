"""Plain convnets: the notebook's two CNNs (seed-faithful) and `convnet`, our fast BatchNorm default.

Shapes below are for the 28x28 input; K (the number of classes) is the only thing that changes between the
5-class CSV and the 10-class dataset.

The notebook's Keras layers are conv(relu) then max-pool; here the ReLU comes after the pool. The two are the
same function (max commutes with any non-decreasing map) with the same gradients, and the ReLU and its
backward then touch a quarter of the elements.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from fashiondist.constants import IMAGE_HEIGHT, IMAGE_WIDTH
from fashiondist.models.base import Classifier
from fashiondist.models.layers import Dropout, ImageConv2d, global_max_pool, keras_init, scaled
from fashiondist.models.pool import MaxPool2x2, PoolReluDropoutSequential


class SimpleCNN(Classifier):
    """The notebook's model_1, layer for layer: 346,821 parameters at K=5 (the 5408x64 dense holds 346,176)."""

    def __init__(self, num_classes: int):
        super().__init__(num_classes)
        h, w = (IMAGE_HEIGHT - 2) // 2, (IMAGE_WIDTH - 2) // 2  # valid 3x3 conv, then 2x2 pool: 13 x 13
        self.net = nn.Sequential(
            ImageConv2d(1, 32, 3),  # valid: [N, 32, 26, 26]
            MaxPool2x2(),  # [N, 32, 13, 13]
            nn.ReLU(),
            nn.Flatten(),  # [N, 5408]
            nn.Linear(32 * h * w, 64),
            nn.ReLU(),
            nn.Linear(64, num_classes),
        )
        keras_init(self)

    def classify(self, z: Tensor) -> Tensor:
        return self.net(z)


class DropoutCNN(Classifier):
    """The notebook's model_2 (its best Kaggle score, 89.08%): 240,901 parameters at K=5.

    Three conv-relu-pool-dropout stages (the first conv valid, the others same), then dense 128 and K.
    Dropout is our fast `Dropout`, the same regulariser at half the cost of `nn.Dropout` on the CPU, and in
    CPU training each pool, ReLU and dropout run as one kernel (`PoolReluDropoutSequential`).
    """

    def __init__(self, num_classes: int):
        super().__init__(num_classes)
        # A valid 3x3 conv, then three 2x2 pools: 28 -> 26 -> 13 -> 6 -> 3.
        h, w = (IMAGE_HEIGHT - 2) // 8, (IMAGE_WIDTH - 2) // 8
        self.net = PoolReluDropoutSequential(
            ImageConv2d(1, 32, 3),  # valid: [N, 32, 26, 26]
            MaxPool2x2(),  # [N, 32, 13, 13]
            nn.ReLU(),
            Dropout(0.2),
            nn.Conv2d(32, 64, 3, padding=1),  # [N, 64, 13, 13]
            MaxPool2x2(),  # [N, 64, 6, 6]
            nn.ReLU(),
            Dropout(0.4),
            nn.Conv2d(64, 128, 3, padding=1),  # [N, 128, 6, 6]
            MaxPool2x2(),  # [N, 128, 3, 3]
            nn.ReLU(),
            Dropout(0.4),
            nn.Flatten(),  # [N, 1152]
            nn.Linear(128 * h * w, 128),
            nn.ReLU(),
            nn.Linear(128, num_classes),
        )
        keras_init(self)

    def classify(self, z: Tensor) -> Tensor:
        return self.net(z)


def _conv_pool_bn(cin: int, cout: int, extra_convs: int) -> nn.Sequential:
    """airbench's block: conv, 2x2 max-pool, BN, GELU, then `extra_convs` x (conv, BN, GELU) at the pooled size.

    Pooling right after the first conv halves the work of the BN and the activation; convs carry no bias
    because BN follows each one.
    """
    conv = ImageConv2d if cin == 1 else nn.Conv2d  # the first block's gradients from the image kernel
    layers: list[nn.Module] = [
        conv(cin, cout, 3, padding=1, bias=False),
        MaxPool2x2(),
        nn.BatchNorm2d(cout),
        nn.GELU(),
    ]
    for _ in range(extra_convs):
        layers += [nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.GELU()]
    return nn.Sequential(*layers)


class ConvNet(Classifier):
    """Our default: a compact BatchNorm convnet in the airbench spirit, fast on the CPU.

    Three conv-pool-BN-GELU blocks (28 -> 14 -> 7 -> 3 pixels), a global max-pool and one linear layer.
    At the default widths 32/64/128 it has ~94k parameters and costs ~7.5M multiply-accumulates per image,
    barely more than cnn-dropout; with its recipe (SGD-Nesterov, one-cycle to 0.2, label smoothing, flip +
    2px shift) and bf16 + channels_last, this design was measured at ~93% on Fashion-MNIST after about a
    minute of training on 2 cores. `width` scales every block; `extra_convs` adds convs per block (airbench94
    uses widths 64/256/256 with one extra, a better fit for GPUs).
    """

    def __init__(
        self,
        num_classes: int,
        widths: Sequence[int] = (32, 64, 128),
        width: float = 1.0,
        extra_convs: int = 0,
    ):
        super().__init__(num_classes)
        channels = scaled(widths, width)
        blocks, cin = [], 1
        for cout in channels:
            blocks.append(_conv_pool_bn(cin, cout, extra_convs))
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(cin, num_classes)

    def classify(self, z: Tensor) -> Tensor:
        z = self.blocks(z)  # [N, C, 3, 3]
        z = global_max_pool(z, self.training)  # [N, C]
        return self.head(z)
