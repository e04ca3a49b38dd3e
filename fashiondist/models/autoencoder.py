"""The notebook's convolutional autoencoder, made a classifier: its encoder feeds a classification head.

The notebook trained the autoencoder for reconstruction only. Here the 7x7 code feeds a small dense head, and
the training objective is joint: cross-entropy on the logits plus `recon_weight` x the MSE between the
decoder's reconstruction and the input pixels on [0, 1]. Both terms are computed in `forward`, so one
backward through DDP reaches every parameter (the decoder would otherwise be unused and break DDP's
`find_unused_parameters=False`). Inference runs the encoder and head only: the exported graph has no decoder.

Sizes: the class default, `width=1.0` (or `channels=(256, 128)`), is the notebook's network: its reconstruction
part (encoder + decoder, no head) has 742,657 parameters and costs ~126M multiply-accumulates per image
(60M for inference), so it trains at a few hundred images/s on 2 cores. The registry's `autoencoder` uses
`width=0.25` (64/32 channels), 16x cheaper, for the CPU; `--set model_kwargs.width=1.0` restores the notebook's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from fashiondist.constants import IMAGE_HEIGHT, IMAGE_WIDTH
from fashiondist.models.base import Classifier, classification_loss
from fashiondist.models.layers import Dropout, ImageConv2d, keras_init, scaled
from fashiondist.models.pool import MaxPool2x2

NOTEBOOK_CHANNELS = (256, 128)


class ConvAutoencoder(Classifier):
    """Encoder -> 7x7 code -> dense head (logits); code -> decoder (reconstruction, training only).

    `recon_weight` scales the per-pixel MSE against the cross-entropy. Near convergence the MSE is around 0.01
    and the CE a few tenths, so the default 10 lets reconstruction shape the encoder without leading it.
    """

    def __init__(
        self,
        num_classes: int,
        width: float = 1.0,
        channels: Sequence[int] | None = None,
        hidden: int = 128,
        dropout: float = 0.3,
        recon_weight: float = 10.0,
    ):
        super().__init__(num_classes)
        c1, c2 = channels if channels is not None else scaled(NOTEBOOK_CHANNELS, width)
        self.recon_weight = recon_weight
        self.encoder = nn.Sequential(
            # ReLU after the pool: the same function as Keras' conv(relu) + pool, on a quarter of the elements.
            ImageConv2d(1, c1, 3, padding=1),  # [N, c1, 28, 28]
            MaxPool2x2(),  # [N, c1, 14, 14]
            nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1),
            MaxPool2x2(),  # the code: [N, c2, 7, 7]
            nn.ReLU(),
        )
        self.decoder = nn.Sequential(
            nn.Conv2d(c2, c2, 3, padding=1),
            nn.ReLU(),
            nn.Upsample(scale_factor=2, mode="nearest"),  # [N, c2, 14, 14]
            nn.Conv2d(c2, c1, 3, padding=1),
            nn.ReLU(),
            nn.Upsample(scale_factor=2, mode="nearest"),  # [N, c1, 28, 28]
            nn.Conv2d(c1, 1, 3, padding=1),
            nn.Sigmoid(),  # pixels on [0, 1]
        )
        self.head = nn.Sequential(
            nn.Flatten(),  # [N, c2 * 49]
            Dropout(dropout),
            nn.Linear(c2 * (IMAGE_HEIGHT // 4) * (IMAGE_WIDTH // 4), hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )
        keras_init(self)

    def classify(self, z: Tensor) -> Tensor:
        return self.head(self.encoder(z))

    def reconstruct(self, x: Tensor) -> Tensor:
        """0..255 pixels [N, 1, 28, 28] -> the decoder's reconstruction [N, 1, 28, 28] on [0, 1]."""
        return self.decoder(self.encoder(self.normalize(x)))

    def forward(
        self, x: Tensor, targets: Tensor | None = None, label_smoothing: float = 0.0
    ) -> Tensor | tuple[Tensor, Tensor]:
        code = self.encoder(self.normalize(x))
        logits = self.head(code)
        if targets is None:
            return logits
        reconstruction = self.decoder(code).float()
        mse = F.mse_loss(reconstruction, x.to(reconstruction.dtype) / 255.0)
        return classification_loss(logits, targets, label_smoothing) + self.recon_weight * mse, logits
