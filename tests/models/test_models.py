"""Every registered model keeps the contract (shapes, gradients, seeding, export-friendly eval), and the
seed-faithful variants have the notebook's parameter counts."""

from __future__ import annotations

import pytest
import torch

from fashiondist.models import create_model, list_models
from fashiondist.models.complexity import count_parameters, macs_per_image
from fashiondist.models.layers import Dropout

NAMES = list_models()


@pytest.mark.parametrize("name", NAMES)
def test_logits_shape_dtype_and_finite(name, sample_batch):
    images, _ = sample_batch
    torch.manual_seed(0)
    model = create_model(name, 5).eval()
    for n in (1, 7):
        with torch.no_grad():
            logits = model(images[:n])
        assert logits.shape == (n, 5) and logits.dtype == torch.float32
        assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", NAMES)
def test_every_parameter_gets_a_gradient_from_the_objective(name, sample_batch):
    images, labels = sample_batch
    torch.manual_seed(0)
    model = create_model(name, 10).train()
    loss, logits = model(images, targets=labels, label_smoothing=0.1)
    assert loss.ndim == 0 and torch.isfinite(loss) and logits.shape == (8, 10)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no finite gradient for {missing}"


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_weights_and_deterministic_eval(name, sample_batch):
    images, _ = sample_batch
    torch.manual_seed(3)
    a = create_model(name, 10).eval()
    torch.manual_seed(3)
    b = create_model(name, 10).eval()
    for (key, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), key
    pair = images[:2]
    with torch.no_grad():
        assert torch.equal(a(pair), b(pair))  # two models built from one seed answer alike, bit for bit
        # uint8 and float pixels are the same input: normalisation casts first, so the arithmetic is identical.
        assert torch.equal(a(pair), a(pair.float()))


@pytest.mark.parametrize(("name", "params"), [("cnn", 346_821), ("cnn-dropout", 240_901)])
def test_notebook_parameter_counts_at_five_classes(name, params):
    assert count_parameters(create_model(name, 5)) == params


def test_autoencoder_notebook_reconstruction_network_and_objective(sample_batch):
    images, labels = sample_batch
    faithful = create_model("autoencoder", 5, width=1.0)
    assert count_parameters(faithful.encoder) + count_parameters(faithful.decoder) == 742_657
    assert count_parameters(create_model("autoencoder", 5, channels=(256, 128))) == count_parameters(faithful)

    torch.manual_seed(0)
    model = create_model("autoencoder", 10)
    recon = model.reconstruct(images)
    assert recon.shape == images.shape and recon.min() >= 0.0 and recon.max() <= 1.0
    # The objective is CE plus the reconstruction term: recon_weight=0 leaves exactly the CE.
    model.eval()
    loss, _ = model(images, targets=labels)
    model.recon_weight = 0.0
    ce, _ = model(images, targets=labels)
    assert loss > ce


def _keras_resnet_params(k: int) -> int:
    """The notebook's ResNet counted from SPEC's layer list, layer by layer (Keras convs carry a bias; a
    BatchNorm trains a scale and a shift per channel): a 7x7 stem of 64, then 4 stacks of 2 basic blocks of
    64, 128, 256, 512 filters (3x3-BN-3x3-BN; a 1x1 shortcut conv where a stack starts downsampling), then
    AvgPool 2 over the 4x4 map (28 -> 14 -> 7 -> 4 by the three downsampling stacks) and Dense K on 512 x 2 x 2."""

    def conv(cin: int, cout: int, size: int) -> int:
        return size * size * cin * cout + cout

    def bn(c: int) -> int:
        return 2 * c

    total, cin = conv(1, 64, 7) + bn(64), 64
    for stack, filters in enumerate((64, 128, 256, 512)):
        for block in range(2):
            shortcut = conv(cin, filters, 1) if stack > 0 and block == 0 else 0
            total += conv(cin, filters, 3) + bn(filters) + conv(filters, filters, 3) + bn(filters) + shortcut
            cin = filters
    return total + conv(512 * 2 * 2, k, 1)  # Dense K: a weight per input and class, a bias per class


@pytest.mark.parametrize("k", [5, 10])
def test_resnet_parameter_count_follows_the_spec_layers(k):
    assert count_parameters(create_model("resnet", k)) == _keras_resnet_params(k)


def test_width_scales_convnet():
    assert count_parameters(create_model("convnet", 10, width=2.0)) > 3 * count_parameters(
        create_model("convnet", 10)
    )


def test_macs_count_conv_and_linear_layers():
    # cnn: conv 3x3x32 at 26x26 + dense 5408x64 + dense 64x10
    assert macs_per_image(create_model("cnn", 10)) == 9 * 32 * 26 * 26 + 5408 * 64 + 64 * 10


def test_dropout_keeps_the_expected_value_and_is_identity_in_eval():
    torch.manual_seed(0)
    drop = Dropout(0.4)
    x = torch.ones(64, 32, 13, 13).to(memory_format=torch.channels_last)
    y = drop(x)
    kept = (y != 0).float().mean().item()
    assert abs(kept - 0.6) < 0.01 and abs(y.mean().item() - 1.0) < 0.02
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert drop(x.bfloat16()).dtype == torch.bfloat16
    assert drop.eval()(x) is x
