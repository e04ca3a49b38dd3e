"""Mixup and cutmix on the device-resident batches: the same plan on every rank, images and targets as the
timm recipe defines them, label smoothing composed as timm's `mixup_target`, and a run that trains with it."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fashiondist.engine.batches import (
    BatchLayout,
    TrainBatches,
    apply_augment,
    draw_augment_plan,
    epoch_generator,
)
from fashiondist.engine.mixing import MixSettings, draw_mix_plan, hard_labels

BOTH = MixSettings(mixup=0.4, cutmix=1.0, prob=0.8, switch_prob=0.5)


def _batches(images, labels, global_batch, accum, world, rank, mixing=BOTH):
    layout = BatchLayout.of(global_batch, accum, world)
    return TrainBatches(
        images, labels, layout, rank, torch.device("cpu"), seed=7, augment=True, shift=2, erase=0.1,
        mixing=mixing, num_classes=10,
    )  # fmt: skip


def test_two_ranks_see_the_mixed_batches_of_one(sample_images, sample_labels):
    images, labels = sample_images[:512], sample_labels[:512]
    single = list(_batches(images, labels, 128, 1, 1, 0).epoch(1))
    ranks = [list(_batches(images, labels, 128, 2, 2, r).epoch(1)) for r in range(2)]
    for step, (x, y) in enumerate(single):
        # global batch `step` splits as [accum, world, per_device]
        parts = [ranks[r][step * 2 + micro] for micro in range(2) for r in range(2)]
        assert torch.equal(torch.cat([p[0] for p in parts]), x)
        assert torch.equal(torch.cat([p[1] for p in parts]), y)
    assert x.dtype == torch.float32 and y.shape == (128, 10)


def test_mixed_images_and_targets_follow_the_plan(sample_images, sample_labels):
    """Rebuild one epoch by hand from the drawn plans: mixup blends, cutmix pastes a box of area 1 - lam."""
    images, labels = sample_images[:256], sample_labels[:256]
    batches = _batches(images, labels, 256, 1, 1, 0)
    x, y = next(batches.epoch(0))
    gen = epoch_generator(7, 0)
    order = torch.randperm(256, generator=gen)
    aug = draw_augment_plan(256, gen, flip=True, shift=2, erase=0.1)
    mix = draw_mix_plan(256, gen, BOTH)
    augmented = apply_augment(torch.tensor(images).unsqueeze(1)[order], aug)  # by position
    one_hot = F.one_hot(torch.as_tensor(labels)[order], 10).float()
    kinds = {"none": 0, "mixup": 0, "cutmix": 0}
    for i in range(256):
        j = int(mix.partner[i])
        lam = float(mix.lam[i])
        own, other = augmented[i, 0].float(), augmented[j, 0].float()
        if lam == 1.0 and not mix.cut[i]:
            kinds["none"] += 1
            expected = own
        elif mix.cut[i]:
            kinds["cutmix"] += 1
            y0, x0, y1, x1 = (int(v) for v in mix.box[i])
            expected = own.clone()
            expected[y0:y1, x0:x1] = other[y0:y1, x0:x1]
            assert abs(lam - (1 - (y1 - y0) * (x1 - x0) / 784)) < 1e-6  # float32 lam of an exact area ratio
        else:
            kinds["mixup"] += 1
            expected = lam * own + (1 - lam) * other
        assert torch.allclose(x[i, 0], expected, rtol=0, atol=1e-4), i  # 255 x float32 eps, a few roundings
        # float32: two products and a sum of values <= 1 on each side, each within 3 x 2^-24 (1.8e-7) of exact
        assert torch.allclose(y[i], lam * one_hot[i] + (1 - lam) * one_hot[j], rtol=0, atol=8 * 2.0**-24), i
    assert all(count > 20 for count in kinds.values()), kinds  # prob 0.8, switch 0.5: each kind is common
    # a float32 sum of 10 targets <= 1: within 10 x 2^-24 of 1 plus each target's 3 roundings
    assert torch.allclose(y.sum(1), torch.ones(256), rtol=0, atol=40 * 2.0**-24)
    assert torch.equal(hard_labels(y), y.argmax(1))


def test_label_smoothing_on_mixed_targets_is_timms_mixup_target():
    """timm: target = lam x smooth(one_hot(a)) + (1 - lam) x smooth(one_hot(b)), smooth(t) = t (1 - e) + e / K."""
    torch.manual_seed(0)
    logits, a, b, lam, e = (
        torch.randn(32, 10),
        torch.randint(0, 10, (32,)),
        torch.randint(0, 10, (32,)),
        0.3,
        0.1,
    )
    mixed = lam * F.one_hot(a, 10).float() + (1 - lam) * F.one_hot(b, 10).float()
    smooth = lambda t: t * (1 - e) + e / 10  # noqa: E731
    timm_target = lam * smooth(F.one_hot(a, 10).float()) + (1 - lam) * smooth(F.one_hot(b, 10).float())
    expected = -(timm_target * logits.log_softmax(1)).sum(1).mean()
    got = F.cross_entropy(logits, mixed, label_smoothing=e)
    # float32 on both sides: log_softmax, a 10-term sum and a 16-term mean of values < 10 (~30 roundings each), so
    # the two differ by < 64 unit roundoffs of the loss
    assert torch.allclose(got, expected, rtol=64 * 2.0**-24, atol=0)


def test_without_mixing_the_batches_are_unchanged(sample_images, sample_labels):
    """Mixing draws after the augmentation plan: a sample it leaves alone is exactly the unmixed one."""
    images, labels = sample_images[:256], sample_labels[:256]
    plain = next(_batches(images, labels, 256, 1, 1, 0, mixing=None).epoch(3))
    mixed = next(_batches(images, labels, 256, 1, 1, 0).epoch(3))
    gen = epoch_generator(7, 3)
    torch.randperm(256, generator=gen)
    draw_augment_plan(256, gen, flip=True, shift=2, erase=0.1)
    plan = draw_mix_plan(256, gen, BOTH)
    untouched = (plan.lam == 1.0) & ~plan.cut  # not mixed (a same-label partner also gives a one-hot target)
    assert untouched.sum() > 20
    assert torch.equal(mixed[0][untouched], plain[0][untouched].float())
    assert torch.equal(mixed[1][untouched].argmax(1), plain[1][untouched])
    assert plain[1].dtype == torch.int64  # no mixing: the labels themselves, as before
