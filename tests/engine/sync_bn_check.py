"""Run by test_ddp_models: one training step of a BatchNorm net with `CpuSyncBatchNorm` on 2 gloo ranks, each
given half of a batch, against the same net in float64 on the whole batch in one process. Prints, as JSON,
the largest relative difference (normwise per tensor) of the gradients and of the running statistics."""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from fashiondist.engine.batchnorm import convert_sync_batchnorm

BATCH = 16  # 8 images per rank


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, bias=False), nn.BatchNorm2d(4), nn.GELU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 3)
    ).to(memory_format=torch.channels_last)


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, 1, 28, 28, generator=generator) * 3 + 1  # [B, 1, 28, 28]
    y = torch.randint(0, 3, (BATCH,), generator=generator)
    reference = _net().double()
    sync = nn.parallel.DistributedDataParallel(convert_sync_batchnorm(_net(), torch.device("cpu")))
    half = slice(rank * BATCH // 2, (rank + 1) * BATCH // 2)
    nn.functional.cross_entropy(sync(x[half]), y[half]).backward()
    nn.functional.cross_entropy(reference(x.double()), y).backward()
    if rank == 0:
        grads = {
            name: float((p.grad.double() - q.grad).norm() / q.grad.norm())
            for (name, p), (_, q) in zip(
                sync.module.named_parameters(), reference.named_parameters(), strict=True
            )
        }
        stats = {
            name: float((b.double() - c).norm() / c.norm())
            for (name, b), (_, c) in zip(sync.module.named_buffers(), reference.named_buffers(), strict=True)
            if "running" in name
        }
        kinds = sorted({type(m).__name__ for m in sync.module.modules()})
        with open(out, "w") as fh:
            json.dump({"grads": grads, "stats": stats, "kinds": kinds}, fh)
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(_worker, args=(int(sys.argv[1]), sys.argv[2]), nprocs=2)
