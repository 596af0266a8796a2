"""Process groups and devices: one process per GPU (or per CPU group) started by ``torchrun``.

``torchrun --nproc_per_node N -m spkemb pretrain ...`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`setup` reads them and joins the group
(NCCL on CUDA, gloo on CPU). Without them (a plain ``spkemb pretrain``) everything here is a
no-op for a world of one, so callers never need to branch on "distributed or not".
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist

from spkemb.utils.runtime import resolve_device


def env_world_size() -> int:
    """WORLD_SIZE as set by torchrun (1 when absent)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    """LOCAL_RANK as set by torchrun (0 when absent)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def local_world_size() -> int:
    """Processes on this machine (LOCAL_WORLD_SIZE from torchrun; 1 when absent)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def setup(device: str = "auto", timeout: float | None = None) -> torch.device:
    """Resolve the device and, under torchrun with WORLD_SIZE > 1, join the process group.

    ``timeout``: seconds a collective may wait for the other ranks (default: torch's, 10 to 30
    minutes); a job whose ranks finish at very different times (extraction) needs more.
    Idempotent: a group that is already initialised is kept as it is.
    """
    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if env_world_size() > 1 and not is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"device_id": dev} if dev.type == "cuda" else {}
        if timeout is not None:
            import datetime

            kwargs["timeout"] = datetime.timedelta(seconds=timeout)
        dist.init_process_group(backend=backend, init_method="env://", **kwargs)
    return dev


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    """True on rank 0 (and in a plain single-process run): the process that writes files."""
    return rank() == 0


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def cleanup(wait: bool = True) -> None:
    """Leave the process group (call once, at the very end of a command). ``wait``: first wait for
    every rank, as a rank that tears the group down while another is still in a collective makes gloo
    abort that one (SIGABRT, "terminate called without an active exception"); ``False`` on an error
    path, where another rank may never arrive."""
    if is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def all_gather(t: torch.Tensor, grad: bool = False) -> torch.Tensor:
    """Concatenate ``t`` from every rank along dim 0, in rank order. Alone, returns ``t`` (detached
    unless ``grad``).

    ``grad=False``: no gradient flows back (queues, centres). ``grad=True``: an autograd-aware
    gather (``torch.distributed.nn.functional.all_gather``), so each rank's own rows get the
    gradient of the global loss (in-batch negatives spanning all ranks). Ranks may hold different
    numbers of rows (a batch that lost unreadable items): sizes are exchanged first and the rows
    padded and trimmed. Every rank must call this at the same point.
    """
    if not is_initialized() or world_size() == 1:
        return t if grad else t.detach()
    if not grad:
        t = t.detach()
    t = t.contiguous()
    n = torch.tensor([t.shape[0]], device=t.device, dtype=torch.long)
    sizes = [torch.zeros_like(n) for _ in range(world_size())]
    dist.all_gather(sizes, n)
    counts = [int(s.item()) for s in sizes]
    longest = max(counts)
    if t.shape[0] < longest:
        t = torch.cat([t, t.new_zeros((longest - t.shape[0], *t.shape[1:]))])
    if grad:
        from torch.distributed.nn.functional import all_gather as gather_autograd

        parts = list(gather_autograd(t))
    else:
        parts = [torch.empty_like(t) for _ in counts]
        dist.all_gather(parts, t)
    return torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)])


def concat_all_gather(t: torch.Tensor) -> torch.Tensor:
    """:func:`all_gather` without gradient (MoCo's key queue, DINO's centre)."""
    return all_gather(t, grad=False)


def gather_with_grad(t: torch.Tensor) -> torch.Tensor:
    """:func:`all_gather` with gradient (SimCLR's and CEL's global batch)."""
    return all_gather(t, grad=True)


def all_reduce(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce (``sum``, ``max``, ``min`` or ``mean``); returns ``t``. No-op alone."""
    if not is_initialized() or world_size() == 1:
        return t
    if op == "mean":
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.div_(world_size())
    ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
    dist.all_reduce(t, op=ops[op])
    return t


def all_gather_object(obj: object) -> list[object]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` alone."""
    if not is_initialized() or world_size() == 1:
        return [obj]
    out: list[object] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: object, src: int = 0) -> object:
    """Rank ``src``'s ``obj`` on every rank (picklable); ``obj`` alone."""
    if not is_initialized() or world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
