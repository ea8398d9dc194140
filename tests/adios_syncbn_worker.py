"""Helper of tests/test_adios_ddp.py (no ``test_`` prefix: pytest does not collect it).

Per-view BatchNorm across processes: two processes each hold half of every one of N views;
the batched forward of all N views under :func:`adios_ssl.objective.per_view_batch_norm`, with
BatchNorm layers that synchronise their statistics over the processes, must equal ONE process
running a plain BatchNorm network on each whole view in turn (outputs, summed gradients,
running statistics): each view normalised over that view's samples on all processes.

    python tests/adios_syncbn_worker.py OUT.json --backend gloo   # CPU: a stand-in layer
    python tests/adios_syncbn_worker.py OUT.json --backend nccl   # 2 GPUs: torch.nn.SyncBatchNorm

torch runs ``SyncBatchNorm`` on GPUs only, so with gloo the layers are
:class:`AllReduceBatchNorm2d`, a CPU stand-in with SyncBatchNorm's contract (each call
normalises with the mean and variance of that call's input gathered over all processes, and
updates the running statistics with them; autograd through the all-reduce). With nccl they are
the real ``torch.nn.SyncBatchNorm`` (``convert_sync_batchnorm``), one GPU per process.
Rank 0 writes the largest differences to OUT.json.
"""
from __future__ import annotations

import argparse
import copy
import json
import os

import torch
import torch.distributed as dist
from torch import nn

VIEWS, PER_RANK, WORLD = 3, 4, 2


class _AllReduceSum(torch.autograd.Function):
    """Sum over the processes; the gradient of each input is the sum of the output gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class AllReduceBatchNorm2d(nn.BatchNorm2d):
    """CPU stand-in for SyncBatchNorm (training mode): statistics over all processes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        c = x.shape[1]
        count = torch.full((1,), x.numel() / c, dtype=x.dtype)
        stats = _AllReduceSum.apply(torch.cat([x.sum((0, 2, 3)), (x * x).sum((0, 2, 3)), count]))
        n = stats[-1]
        mean = stats[:c] / n
        var = stats[c:2 * c] / n - mean * mean
        with torch.no_grad():
            self.num_batches_tracked += 1
            self.running_mean.mul_(1 - self.momentum).add_(self.momentum * mean)
            self.running_var.mul_(1 - self.momentum).add_(self.momentum * var * n / (n - 1))
        shape = (1, c, 1, 1)
        return ((x - mean.view(shape)) / torch.sqrt(var.view(shape) + self.eps)
                * self.weight.view(shape) + self.bias.view(shape))


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))


def to_stand_in(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            layer = AllReduceBatchNorm2d(child.num_features).to(child.weight.dtype)
            layer.load_state_dict(child.state_dict())
            setattr(module, name, layer)
        else:
            to_stand_in(child)


def worker(rank: int, backend: str, out: str) -> None:
    from adios_ssl.objective import per_view_batch_norm

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ["ADIOS_SYNCBN_PORT"])
    dist.init_process_group(backend, rank=rank, world_size=WORLD)
    cuda = backend == "nccl"
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    dtype = torch.float32 if cuda else torch.float64
    generator = torch.Generator().manual_seed(1)
    # N views of the whole batch, with different statistics; this process holds rows
    # rank * PER_RANK : (rank + 1) * PER_RANK of each
    views = [torch.randn(WORLD * PER_RANK, 3, 8, 8, generator=generator, dtype=dtype) * (1 + k)
             + 2 * k for k in range(VIEWS)]
    weights = [torch.randn(WORLD * PER_RANK, 5, generator=generator, dtype=dtype)
               for _ in range(VIEWS)]
    rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)

    reference = net().to(dtype)
    model = copy.deepcopy(reference)
    if cuda:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    else:
        to_stand_in(model)
    model = model.to(device)
    with per_view_batch_norm([model], VIEWS):
        out_rank = model(torch.cat([v[rows] for v in views]).to(device))
    loss = (out_rank * torch.cat([w[rows] for w in weights]).to(device)).sum()
    loss.backward()
    grads = [p.grad.detach().clone() for p in model.parameters()]
    for g in grads:
        dist.all_reduce(g)  # the gradient of the sum of both processes' losses
    outs = [torch.empty_like(out_rank) for _ in range(WORLD)]
    dist.all_gather(outs, out_rank.detach())

    if rank == 0:
        # one process, plain BatchNorm, each whole view in turn
        expected = [reference(v) for v in views]
        ref_loss = sum((e * w).sum() for e, w in zip(expected, weights))
        ref_grads = torch.autograd.grad(ref_loss, list(reference.parameters()))
        expected = [e.detach() for e in expected]
        # process r's output rows are [view 0 rows, view 1 rows, ...] of its half
        got = [torch.cat([o.cpu().chunk(VIEWS)[k] for o in outs]) for k in range(VIEWS)]
        stats = {k: v for k, v in model.state_dict().items() if "running" in k}
        ref_stats = {k: v for k, v in reference.state_dict().items() if "running" in k}
        result = {
            "output": max(float((g - e).abs().max()) for g, e in zip(got, expected)),
            "gradient": max(float((g.cpu() - r).abs().max()) for g, r in zip(grads, ref_grads)),
            "running_stats": max(float((stats[k].cpu() - ref_stats[k]).abs().max())
                                 for k in ref_stats),
            "gradient_scale": max(float(r.abs().max()) for r in ref_grads),
            "layers": sorted({type(m).__name__ for m in model.modules()
                              if isinstance(m, nn.modules.batchnorm._BatchNorm)}),
            "num_batches_tracked": int(model[1].num_batches_tracked),
        }
        with open(out, "w") as f:
            json.dump(result, f)
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--backend", choices=("gloo", "nccl"), default="gloo")
    parser.add_argument("--port", default="29533")
    args = parser.parse_args()
    os.environ["ADIOS_SYNCBN_PORT"] = args.port
    torch.set_num_threads(1)
    torch.multiprocessing.spawn(worker, args=(args.backend, args.out), nprocs=WORLD)


if __name__ == "__main__":
    main()
