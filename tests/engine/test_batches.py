"""Device-resident batching: the plan is the same on every rank, shards tile the global batch, augmentation
matches a plain per-image reference, and evaluation shards count every sample exactly once."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fashiondist.engine.batches import (
    AugmentPlan,
    BatchLayout,
    TrainBatches,
    apply_augment,
    draw_augment_plan,
    epoch_generator,
    shard_for_eval,
)
from fashiondist.errors import InputError


def _reference_augment(image: torch.Tensor, flip: bool, dy: int, dx: int, box) -> torch.Tensor:
    """One image [H, W], the slow obvious way: translate with zero fill, mirror, erase a box."""
    h, w = image.shape
    out = torch.zeros_like(image)
    for r in range(h):
        for c in range(w):
            src_r, src_c = r - dy, c - dx
            if flip:
                src_c = w - 1 - src_c
            if 0 <= src_r < h and 0 <= src_c < w:
                out[r, c] = image[src_r, src_c]
    y0, x0, y1, x1 = (int(v) for v in box)
    out[y0:y1, x0:x1] = 0
    return out


def test_augment_matches_per_image_reference(sample_images):
    images = torch.tensor(sample_images[:16]).unsqueeze(1)  # [16, 1, 28, 28] uint8
    plan = draw_augment_plan(16, epoch_generator(3, 1), flip=True, shift=2, erase=0.5)
    assert plan.flip.any() and (~plan.flip).any() and (plan.dy != 0).any()
    assert (plan.erase_box[:, 2] > plan.erase_box[:, 0]).any(), "some boxes must erase at this probability"
    out = apply_augment(images, plan)
    assert out.shape == images.shape and out.dtype == torch.uint8
    for i in range(16):
        expected = _reference_augment(
            images[i, 0], bool(plan.flip[i]), int(plan.dy[i]), int(plan.dx[i]), plan.erase_box[i]
        )
        assert torch.equal(out[i, 0], expected), f"image {i}"


@pytest.mark.parametrize("box", [torch.zeros(8, 4, dtype=torch.int64), None])
def test_identity_plan_leaves_images_alone(sample_images, box):
    images = torch.tensor(sample_images[:8]).unsqueeze(1)
    zeros = torch.zeros(8, dtype=torch.int64)
    plan = AugmentPlan(torch.zeros(8, dtype=torch.bool), zeros, zeros, box)
    assert torch.equal(apply_augment(images, plan), images)


def test_no_erasing_draws_no_boxes_and_matches_the_reference(sample_images):
    """erase 0 (the recipes' default): no boxes drawn, the mask skipped; flip and shift as the reference has them."""
    images = torch.tensor(sample_images[:16]).unsqueeze(1)
    plan = draw_augment_plan(16, epoch_generator(3, 1), flip=True, shift=2, erase=0.0)
    assert plan.erase_box is None and plan.take(slice(2, 6)).erase_box is None
    out = apply_augment(images, plan)
    for i in range(16):
        reference = _reference_augment(
            images[i, 0], bool(plan.flip[i]), int(plan.dy[i]), int(plan.dx[i]), (0,) * 4
        )
        assert torch.equal(out[i, 0], reference), f"image {i}"


def _epoch_batches(images, labels, global_batch, accum, world, rank, epoch=0):
    layout = BatchLayout.of(global_batch, accum, world)
    batches = TrainBatches(
        images, labels, layout, rank, torch.device("cpu"), seed=7, augment=True, shift=2, erase=0.1
    )
    return list(batches.epoch(epoch)), batches.steps_per_epoch


@pytest.mark.parametrize("world,accum", [(2, 1), (2, 2), (1, 4)])
def test_shards_tile_the_single_process_global_batch(sample_images, sample_labels, world, accum):
    images, labels = sample_images[:1000], sample_labels[:1000]
    single, steps = _epoch_batches(images, labels, 128, 1, 1, 0)
    per_rank = [_epoch_batches(images, labels, 128, accum, world, r)[0] for r in range(world)]
    assert steps == 1000 // 128 and len(single) == steps
    for step in range(steps):
        parts = []
        for micro in range(accum):
            for rank in range(world):
                parts.append(per_rank[rank][step * accum + micro])
        x = torch.cat([p[0] for p in parts])
        y = torch.cat([p[1] for p in parts])
        assert torch.equal(x, single[step][0]) and torch.equal(y, single[step][1])


def test_epochs_differ_and_repeat_for_the_same_seed(sample_images, sample_labels):
    a, _ = _epoch_batches(sample_images[:600], sample_labels[:600], 100, 1, 1, 0, epoch=0)
    b, _ = _epoch_batches(sample_images[:600], sample_labels[:600], 100, 1, 1, 0, epoch=0)
    c, _ = _epoch_batches(sample_images[:600], sample_labels[:600], 100, 1, 1, 0, epoch=1)
    assert all(torch.equal(x[0], y[0]) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0][1], c[0][1])


def test_start_step_skips_exactly(sample_images, sample_labels):
    layout = BatchLayout.of(100, 1, 1)
    batches = TrainBatches(
        sample_images[:600], sample_labels[:600], layout, 0, torch.device("cpu"), 1, True, 2, 0.0
    )
    full = list(batches.epoch(2))
    tail = list(batches.epoch(2, start_step=4))
    assert len(tail) == 2 and all(torch.equal(x[0], y[0]) for x, y in zip(full[4:], tail, strict=True))


def test_layout_rejects_a_batch_that_does_not_divide():
    assert BatchLayout.of(256, 2, 4).per_device == 32
    with pytest.raises(InputError, match=r"--batch-size 100 does not divide into --grad-accum 3 x 2 process"):
        BatchLayout.of(100, 3, 2)


@pytest.mark.parametrize("n,world", [(1, 2), (7, 2), (999, 2), (1000, 3), (5, 8)])
def test_eval_shards_cover_every_sample_once(n, world):
    gathered = []
    reals = 0
    for rank in range(world):
        index, real = shard_for_eval(n, rank, world)
        gathered.append(index)
        reals += real
    order = torch.cat(gathered)[:n]
    assert reals == n
    assert torch.equal(order, torch.arange(n))
    assert len({len(g) for g in gathered}) == 1, "every rank must hold the same count for gather"


def test_sample_fixture_is_real(sample_images):
    assert (
        sample_images.dtype == np.uint8 and sample_images.shape[1:] == (28, 28) and sample_images.std() > 50
    )


def test_sizes_say_what_they_count(sample_images, sample_labels):
    """`num_images` counts images and `steps_per_epoch` optimizer steps; there is no ambiguous len()."""
    layout = BatchLayout.of(128, 2, 1)
    batches = TrainBatches(
        sample_images[:1000], sample_labels[:1000], layout, 0, torch.device("cpu"), 7, False, 0, 0.0
    )
    assert batches.num_images == 1000 and batches.steps_per_epoch == 1000 // 128
    assert sum(1 for _ in batches.epoch(0)) == batches.steps_per_epoch * 2  # micro-batches: 2 per step
    with pytest.raises(TypeError):
        len(batches)


@pytest.mark.parametrize("erase", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("shift", [0, 2, 5])
def test_the_cpu_kernel_augments_exactly_as_apply_augment(kernel_isa, erase, shift):
    """`augment_on_cpu` (the compiled gather + flip + shift + erase) against the torch ops, byte for byte,
    over every shift and flip the plans draw, boxes at the edges, and a repeated index."""
    from fashiondist.engine.batches import augment_on_cpu
    from fashiondist.models import kernels

    g = torch.Generator().manual_seed(shift * 10 + int(erase * 2))
    images = torch.randint(0, 256, (300, 1, 28, 28), dtype=torch.uint8, generator=g)
    index = torch.cat([torch.randperm(300, generator=g)[:200], torch.tensor([7, 7, 0, 299])])
    plan = draw_augment_plan(len(index), g, flip=True, shift=shift, erase=erase)
    got = augment_on_cpu(kernels.compiled(), images, index, plan)
    assert got.shape == (len(index), 1, 28, 28) and got.dtype == torch.uint8
    assert torch.equal(got, apply_augment(images[index], plan))


def test_the_cpu_kernel_refuses_an_index_outside_the_images(kernel_isa):
    from fashiondist.engine.batches import augment_on_cpu
    from fashiondist.models import kernels

    images = torch.zeros((5, 1, 28, 28), dtype=torch.uint8)
    plan = draw_augment_plan(2, torch.Generator().manual_seed(0), flip=True, shift=2, erase=0.0)
    for bad in (5, -1):
        with pytest.raises(IndexError, match="outside the 5 images"):
            augment_on_cpu(kernels.compiled(), images, torch.tensor([0, bad]), plan)


def test_train_batches_are_the_same_with_and_without_the_kernel(monkeypatch):
    """A whole epoch of TrainBatches (augmenting, with erasing): the same batches from the kernel and the torch ops."""
    from fashiondist.models import kernels

    g = np.random.default_rng(0)
    images = g.integers(0, 256, (96, 28, 28), dtype=np.uint8)
    labels = g.integers(0, 10, 96)
    layout = BatchLayout.of(32, 1, 1)

    def epoch() -> list[torch.Tensor]:
        batches = TrainBatches(images, labels, layout, 0, torch.device("cpu"), 3, True, 2, 0.5)
        return [x for x, _ in batches.epoch(1)]

    with_kernel = epoch()
    monkeypatch.setattr(kernels, "compiled", lambda: None)
    without = epoch()
    assert len(with_kernel) == 3
    assert all(torch.equal(a, b) for a, b in zip(with_kernel, without, strict=True))
