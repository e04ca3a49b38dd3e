"""What each rank holds of BatchNorm under DDP: one model on every rank before it is evaluated or saved.

BatchNorm's running statistics are buffers, not parameters: DDP averages gradients, never buffers. With
`broadcast_buffers=True` (DDP's default, and accelerate's), every training forward first overwrites each
rank's buffers with rank 0's, then each rank updates them from its own shard of the batch. So after a step,
rank r holds rank 0's statistics advanced by one update from rank r's shard: the ranks disagree, and an
evaluation on every rank (each predicting its shard of the validation set) would blend W different models.

`agree_on_buffers` makes the ranks agree before anything is evaluated, saved or exported: every buffer of
the live model and of the EMA is broadcast from rank 0. Why a broadcast and not timm's `distribute_bn`
average (`--dist-bn reduce`):

- rank 0's buffers are what DDP itself broadcasts at the next forward, so the broadcast changes nothing
  downstream: the training that continues after an evaluation, and a run resumed from the `last/` that rank 0
  saved, are bitwise the same as one that never stopped (an average would move the statistics the next step
  starts from, and a mid-epoch preemption would then resume off the straight run's path);
- an average is not the 1-process statistic either: averaging per-shard variances misses the spread between
  the shards' means, and averaging the running means only averages the last step's shard means (the earlier
  ones are rank 0's through DDP's broadcast). The statistic of the whole global batch is SyncBatchNorm's job
  (`sync_bn`), which makes every rank compute the same update in the first place.

`convert_sync_batchnorm` (config `sync_bn`): BatchNorm over the global batch. On GPUs it is torch's
`nn.SyncBatchNorm` as is; torch refuses it on the CPU (its kernels are CUDA's, and DDP rejects it in a CPU
module), so on the CPU (gloo) `CpuSyncBatchNorm` computes the same global statistics with differentiable
all-reduces. Its state-dict keys are BatchNorm's, so the
checkpoint, the EMA and the export are plain BatchNorm (`load_model` rebuilds them with `nn.BatchNorm2d`).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def _distributed(world_size: int) -> bool:
    return world_size > 1 and dist.is_available() and dist.is_initialized()


@torch.no_grad()
def agree_on_buffers(world_size: int, *modules: nn.Module | None) -> None:
    """Broadcast every buffer of `modules` (the live model, the EMA) from rank 0: BatchNorm's running mean,
    variance and batch count are the ones that differ. One broadcast per module and dtype; a no-op in one process."""
    if not _distributed(world_size):
        return
    for module in modules:
        if module is None:
            continue
        by_dtype: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
        for buffer in module.buffers():
            by_dtype.setdefault((buffer.dtype, buffer.device), []).append(buffer)
        for buffers in by_dtype.values():
            flat = torch.cat([b.reshape(-1) for b in buffers])  # [sum of numel]
            dist.broadcast(flat, src=0)
            for buffer, value in zip(buffers, flat.split([b.numel() for b in buffers]), strict=True):
                buffer.copy_(value.view_as(buffer))


@torch.no_grad()
def ranks_agree(world_size: int, *modules: nn.Module | None) -> bool:
    """Whether every rank holds bitwise the same parameters and buffers in `modules` (two float64 checksums of
    their state dicts, gathered); True in one process."""
    if not _distributed(world_size):
        return True
    tensors = [
        t.detach().double().flatten()
        for module in modules
        if module is not None
        for t in module.state_dict().values()
    ]
    flat = torch.cat(tensors)  # [all elements]
    # A position-weighted sum too, so that two tensors swapping values do not cancel out.
    weights = torch.sin(torch.arange(len(flat), device=flat.device, dtype=torch.float64))
    sums = torch.stack([flat.sum(), (flat * weights).sum()])  # [2]
    gathered = [torch.empty_like(sums) for _ in range(world_size)]
    dist.all_gather(gathered, sums)
    return all(bool(torch.equal(g, gathered[0])) for g in gathered)


class _AllReduceSum(torch.autograd.Function):
    """Sum over the ranks, differentiable: the gradient of every rank's input is the sum of the gradients of
    every rank's output (each rank's loss depends on every rank's input through the sum)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        out = tensor.clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


def _all_reduce_sum(tensor: torch.Tensor, group) -> torch.Tensor:
    return _AllReduceSum.apply(tensor, group)


class CpuSyncBatchNorm(_BatchNorm):
    """SyncBatchNorm for CPU tensors (gloo): torch's `nn.SyncBatchNorm` refuses them, and DDP refuses any
    `nn.SyncBatchNorm` in a CPU module. In training under several processes it combines the ranks' batch
    statistics with two differentiable all-reduces (torch's CUDA kernels do the same with an all-gather);
    in eval mode, or in one process, it is plain BatchNorm. Its parameters and buffers are BatchNorm's."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, process_group=None):  # fmt: skip
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.process_group = process_group

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        group = self.process_group or (dist.group.WORLD if dist.is_initialized() else None)
        sync = self.training and self.track_running_stats and group is not None
        if not sync or dist.get_world_size(group) == 1:
            return super().forward(input)
        return self._sync_forward(input, group)

    def _sync_forward(self, x: torch.Tensor, group) -> torch.Tensor:
        channel_dims = [0, *range(2, x.dim())]  # every dim but channels
        shape = [1, -1, *[1] * (x.dim() - 2)]  # a per-channel vector broadcast over [N, C, ...]
        xf = x.float()  # statistics in fp32 whatever the autocast dtype, as F.batch_norm keeps them
        count = torch.tensor([x.numel() // x.size(1)], dtype=torch.float32, device=x.device)
        var_local, mean_local = torch.var_mean(xf, dim=channel_dims, correction=0)  # [C] each
        # global mean = sum over ranks of count_r x mean_r / total count
        sums = _all_reduce_sum(torch.cat([mean_local * count, count]), group)  # [C + 1]
        total = sums[-1]
        mean = sums[:-1] / total
        # global variance (Chan et al.): sum over ranks of count_r x (var_r + (mean_r - mean)^2), / total
        m2 = _all_reduce_sum(count * (var_local + (mean_local - mean) ** 2), group)
        var = m2 / total
        self._update_running_stats(mean.detach(), var.detach() * total / (total - 1))
        y = (xf - mean.view(shape)) * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, unbiased_var: torch.Tensor) -> None:
        """The running averages, as BatchNorm updates them (momentum None: the cumulative average)."""
        self.num_batches_tracked.add_(1)
        factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        self.running_mean.mul_(1 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
        self.running_var.mul_(1 - factor).add_(unbiased_var.to(self.running_var.dtype), alpha=factor)


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """`module` with every BatchNorm layer made synchronous: torch's `nn.SyncBatchNorm` on GPUs, the
    `CpuSyncBatchNorm` above on the CPU. Both share the layer's parameters and buffers (the same state-dict
    keys and tensors), so a checkpoint, the EMA or an optimizer built on the module sees plain BatchNorm."""
    if device.type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, _BatchNorm) and not isinstance(module, (nn.SyncBatchNorm, CpuSyncBatchNorm)):
        sync = CpuSyncBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        if module.affine:
            sync.weight, sync.bias = module.weight, module.bias
        if module.track_running_stats:
            sync.running_mean, sync.running_var = module.running_mean, module.running_var
            sync.num_batches_tracked = module.num_batches_tracked
        sync.train(module.training)
        return sync
    for name, child in module.named_children():
        module.add_module(name, convert_sync_batchnorm(child, device))
    return module
