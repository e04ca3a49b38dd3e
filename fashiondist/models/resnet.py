"""Residual networks: the notebook's Keras ResNet v1 (seed-faithful) and `resnet9`, made for 28x28 on the CPU."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fashiondist.constants import IMAGE_HEIGHT, IMAGE_WIDTH
from fashiondist.models.base import Classifier
from fashiondist.models.layers import global_max_pool, keras_init, scaled
from fashiondist.models.pool import MaxPool2x2


def _keras_bn(channels: int) -> nn.BatchNorm2d:
    """Keras BatchNormalization defaults: epsilon 1e-3, moving average 0.99 (torch momentum 0.01)."""
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class KerasBasicBlock(nn.Module):
    """Keras ResNet v1 block: conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU.

    Where the block downsamples, the shortcut is a 1x1 stride-2 conv (with bias, no BN), as in Keras'
    `resnet_v1`; elsewhere it is the identity.
    """

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1)
        self.bn1 = _keras_bn(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.bn2 = _keras_bn(cout)
        self.shortcut = (
            nn.Conv2d(cin, cout, 1, stride=stride) if stride != 1 or cin != cout else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(self.shortcut(x) + y)


class KerasResNet(Classifier):
    """The notebook's ResNet (Keras ResNet v1, basic blocks): 11,183,493 parameters at K=5, 11,193,738 at K=10.

    Conv 64 7x7 + BN + ReLU stem at full resolution, 4 stacks x 2 basic blocks with 64/128/256/512 filters
    (28 -> 28 -> 14 -> 7 -> 4 pixels; each stack after the first downsamples in its first block), 2x2
    average pool, dense K. Convs keep their Keras biases and init (he_normal). The notebook's L2 1e-4 on the
    kernels is the weight decay in its recipe. Heavy for 28x28: ~458M multiply-accumulates per image, 100-135M
    in each stack (no stem stride or max-pool, so the first stack runs at full resolution).
    """

    def __init__(
        self, num_classes: int, filters: Sequence[int] = (64, 128, 256, 512), blocks_per_stack: int = 2
    ):
        super().__init__(num_classes)
        self.stem = nn.Sequential(nn.Conv2d(1, filters[0], 7, padding=3), _keras_bn(filters[0]), nn.ReLU())
        blocks, cin = [], filters[0]
        for stack, cout in enumerate(filters):
            for index in range(blocks_per_stack):
                blocks.append(KerasBasicBlock(cin, cout, stride=2 if stack > 0 and index == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AvgPool2d(2)
        h, w = IMAGE_HEIGHT, IMAGE_WIDTH
        for _ in filters[1:]:
            h, w = (h + 1) // 2, (w + 1) // 2  # a stride-2 'same' conv rounds up: 28 -> 14 -> 7 -> 4
        self.head = nn.Linear(cin * (h // 2) * (w // 2), num_classes)  # after the 2x2 average pool
        keras_init(self, kernel="he_normal")

    def classify(self, z: Tensor) -> Tensor:
        z = self.blocks(self.stem(z))  # [N, 512, 4, 4]
        z = torch.flatten(self.pool(z), 1)  # [N, 512 * 2 * 2]
        return self.head(z)


def _conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class Residual(nn.Module):
    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ResNet9(Classifier):
    """Page's DAWNBench ResNet-9, sized for 28x28 grayscale on the CPU.

    3x3 stem and no initial pooling (a 28-pixel image has no resolution to spare); conv-BN-ReLU layers with
    max-pool downsampling 28 -> 14 -> 7 -> 3 and two residual pairs; global max-pool; a bias-free linear
    head whose logits are scaled by 1/8 (as in the original; it keeps early softmax outputs soft). The class
    default is the original's widths 64/128/256/512 (6.6M parameters, 274M MACs per image); the registry's
    `resnet9` uses `width=0.5` (32/64/128/256, 1.6M parameters, 69M MACs) for the CPU.
    """

    def __init__(self, num_classes: int, widths: Sequence[int] = (64, 128, 256, 512), width: float = 1.0):
        super().__init__(num_classes)
        c0, c1, c2, c3 = scaled(widths, width)
        self.net = nn.Sequential(
            _conv_bn(1, c0),  # [N, c0, 28, 28]
            _conv_bn(c0, c1),
            MaxPool2x2(),  # [N, c1, 14, 14]
            Residual(nn.Sequential(_conv_bn(c1, c1), _conv_bn(c1, c1))),
            _conv_bn(c1, c2),
            MaxPool2x2(),  # [N, c2, 7, 7]
            _conv_bn(c2, c3),
            MaxPool2x2(),  # [N, c3, 3, 3]
            Residual(nn.Sequential(_conv_bn(c3, c3), _conv_bn(c3, c3))),
        )
        self.head = nn.Linear(c3, num_classes, bias=False)

    def classify(self, z: Tensor) -> Tensor:
        z = global_max_pool(self.net(z), self.training)  # [N, c3]
        return self.head(z) * 0.125
