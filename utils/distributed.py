"""Processes and devices: torchrun's environment, DDP helpers, gathers that keep gradients."""
from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist

from utils.errors import ConfigError


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``device`` key -> torch.device: auto | cpu | cuda | cuda:N (cuda = this process's GPU)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device={name} but no CUDA device is available; use device=cpu "
                              "or device=auto")
        index = local_rank if name == "cuda" else int(name.split(":")[1])
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device={name}: only {torch.cuda.device_count()} CUDA device(s)")
        return torch.device("cuda", index)
    raise ConfigError(f"device={name!r} is not one of auto, cpu, cuda, cuda:N")


def init_distributed(device_name: str) -> torch.device:
    """Join the process group torchrun describes (if any) and pick this process's device."""
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = resolve_device(device_name, local_rank)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls outside autocast
        torch.backends.cudnn.allow_tf32 = True
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(minutes=30))
    return device


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` [B, ...] from every process -> [world*B, ...]; the backward
    sends each process the gradient of its own slice (summed over processes)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return tensor
    from torch.distributed.nn.functional import all_gather
    return torch.cat(all_gather(tensor.contiguous()), dim=0)


def gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def average_gradients(parameters, bucket_bytes: int = 25 * 2 ** 20) -> None:
    """Average ``.grad`` over all processes (what DDP does after backward), in flat buckets
    of about ``bucket_bytes``; parameters without a gradient are left alone."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    world = dist.get_world_size()
    bucket, size = [], 0
    for index, grad in enumerate(grads):
        bucket.append(grad)
        size += grad.numel() * grad.element_size()
        if size >= bucket_bytes or index == len(grads) - 1:
            flat = torch.cat([g.reshape(-1) for g in bucket])
            dist.all_reduce(flat)
            flat /= world
            offset = 0
            for g in bucket:
                g.copy_(flat[offset:offset + g.numel()].view_as(g))
                offset += g.numel()
            bucket, size = [], 0


def cleanup(wait: bool = True) -> None:
    """Leave the process group; with ``wait``, once every process got here (gloo aborts a
    process whose peers leave first). After an error, don't wait for peers that may be stuck."""
    if dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()
