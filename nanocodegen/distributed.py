"""One process or many: what torchrun's environment says, and the few collectives training needs.

    nanocodegen train ...                                                    # one process
    torchrun --standalone --nproc_per_node=2 -m nanocodegen train ...        # two, on this machine

torchrun sets RANK, LOCAL_RANK, WORLD_SIZE and LOCAL_WORLD_SIZE (and MASTER_ADDR/PORT) in every
process it starts; with WORLD_SIZE > 1 `setup` joins the process group: NCCL on CUDA, gloo on CPU.
Without those variables everything here is a no-op on one process, so the training code has one path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist

TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE")


@dataclass(frozen=True)
class Dist:
    """This process's place in the job, and the device it trains on."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1  # processes on this machine
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0 prepares the tokenizer, evaluates, logs and writes checkpoints."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def choose_device(device: str, local_rank: int = 0) -> torch.device:
    """`auto` is CUDA when there is a GPU, else the CPU; each local rank gets its own GPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda: this torch build sees no CUDA GPU; use --device cpu (or auto)")
        if local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"local rank {local_rank} has no GPU of its own ({torch.cuda.device_count()} visible); "
                "start at most that many processes per node (--nproc_per_node)"
            )
        return torch.device("cuda", local_rank)
    if device == "cpu":
        return torch.device("cpu")
    raise ValueError(f"unknown device {device!r}; choose auto, cpu or cuda")


def read_env(environ=os.environ) -> tuple[int, int, int, int]:
    """(rank, local_rank, world_size, local_world_size) from torchrun's variables; (0, 0, 1, 1) without."""
    present = [name for name in TORCHRUN_VARIABLES if name in environ]
    if not present:
        return 0, 0, 1, 1
    if len(present) < len(TORCHRUN_VARIABLES):
        missing = sorted(set(TORCHRUN_VARIABLES) - set(present))
        raise ValueError(
            f"{', '.join(present)} set but {', '.join(missing)} not: start several processes with torchrun "
            "(it sets all of them), or unset these to train on one process"
        )
    try:
        rank, local_rank, world = (int(environ[name]) for name in TORCHRUN_VARIABLES)
        local_world = int(environ.get("LOCAL_WORLD_SIZE", world))
    except ValueError:
        raise ValueError(f"torchrun's variables must be integers, got {dict(environ)}") from None
    if not 0 <= rank < world or not 0 <= local_rank < local_world:
        raise ValueError(f"RANK={rank} / LOCAL_RANK={local_rank} out of range for WORLD_SIZE={world}")
    return rank, local_rank, world, local_world


def setup(device: str = "auto") -> Dist:
    """Read torchrun's environment, pick this process's device, join the process group if there are peers."""
    rank, local_rank, world, local_world = read_env()
    dev = choose_device(device, local_rank)
    if world > 1 and not torch_dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        torch_dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo", device_id=None)
    return Dist(rank, local_rank, world, local_world, dev)


def shutdown(dist: Dist) -> None:
    if dist.enabled and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def broadcast(obj, dist: Dist, src: int = 0):
    """`obj` as rank `src` has it, on every rank (any picklable object)."""
    if not dist.enabled:
        return obj
    box = [obj]
    torch_dist.broadcast_object_list(box, src=src, device=dist.device if dist.device.type == "cuda" else None)
    return box[0]


def all_gather(obj, dist: Dist) -> list:
    """Every rank's `obj`, in rank order, on every rank."""
    if not dist.enabled:
        return [obj]
    out = [None] * dist.world_size
    torch_dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(values: torch.Tensor, dist: Dist) -> torch.Tensor:
    """Element-wise sum over ranks, in place; the tensor is returned for chaining."""
    if dist.enabled:
        torch_dist.all_reduce(values, op=torch_dist.ReduceOp.SUM)
    return values


def barrier(dist: Dist) -> None:
    if dist.enabled:
        torch_dist.barrier()
