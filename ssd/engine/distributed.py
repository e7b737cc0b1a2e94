"""torch.distributed helpers: launched by torchrun, one process per device."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ssd.errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launch_info() -> DistInfo:
    """This process's place as torchrun set it (RANK, WORLD_SIZE, LOCAL_RANK), read before any
    process group exists, so that the config can be checked before the ranks connect."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    return DistInfo(rank=int(os.environ["RANK"]), world_size=world_size,
                    local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def check_global_batch(batch_size: int, world_size: int) -> None:
    """Raise ConfigError unless the global `batch_size` splits evenly over `world_size`
    processes."""
    if batch_size % world_size:
        raise ConfigError(f"solver.batch_size={batch_size} is the global batch and must be "
                          f"divisible by the number of processes ({world_size})")


def check_sync_bn(sync_bn: bool, device_type: str, world_size: int) -> None:
    """Raise ConfigError when train.sync_bn asks for synchronised batch norm across CPU
    processes: torch's SyncBatchNorm exchanges statistics of GPU tensors only (on CPU its
    forward raises), so the gloo CPU processes cannot run it."""
    if sync_bn and world_size > 1 and device_type == "cpu":
        raise ConfigError(f"train.sync_bn needs CUDA devices: torch's SyncBatchNorm synchronises "
                          f"GPU tensors only, and these {world_size} processes train on the CPU; "
                          "set train.sync_bn=false")


def convert_sync_batch_norm(model: torch.nn.Module, info: DistInfo) -> torch.nn.Module:
    """train.sync_bn: the model's batch-norm layers as SyncBatchNorm when several processes
    train (the same parameters and buffers; one process: the model unchanged)."""
    if not info.enabled:
        return model
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)


def max_over_ranks(value: int, info: DistInfo, group=None) -> int:
    """The largest `value` of all ranks (every rank must call it); `value` itself with one
    process. Exchanged as a CPU tensor: `group` must be a gloo group when the default one is
    NCCL (see `cpu_group`)."""
    if not info.enabled:
        return value
    tensor = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=group)
    return int(tensor.item())


def cpu_group(info: DistInfo):
    """A process group for small CPU tensors: the default one under gloo, a new gloo group of
    all ranks under NCCL (so that exchanging them never waits for the GPU); every rank must
    call it. None with one process."""
    if not info.enabled or dist.get_backend() == "gloo":
        return None
    return dist.new_group(backend="gloo")


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group when started by torchrun (WORLD_SIZE > 1), else single process.

    Backend: NCCL on CUDA, gloo on CPU.
    """
    info = launch_info()
    if not info.enabled:
        return info
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend)
    return info


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def parameters_checksum(model: torch.nn.Module) -> torch.Tensor:
    """A float64 scalar summarising all parameters (identical weights -> identical sums)."""
    total = torch.zeros((), dtype=torch.float64)
    for index, param in enumerate(model.parameters(), start=1):
        total += index * param.detach().double().cpu().sum()
    return total


def ranks_agree(model: torch.nn.Module, info: DistInfo) -> tuple[bool, list[float]]:
    """Gather every rank's parameter checksum; True when they are all equal."""
    local = parameters_checksum(model)
    if info.enabled and dist.get_backend() == "nccl":
        local = local.cuda()
    if not info.enabled:
        return True, [local.item()]
    gathered = [torch.zeros_like(local) for _ in range(info.world_size)]
    dist.all_gather(gathered, local)
    values = [g.item() for g in gathered]
    return all(v == values[0] for v in values), values


def finish_together(info: DistInfo) -> None:
    """After a successful run: every rank waits for the others (rank 0 writes the last
    checkpoint and pictures), so the nodes' torchrun agents see their workers end together.
    Otherwise the agent that hosts the c10d rendezvous store may exit first, and another
    node's agent, still polling the store, fails with RendezvousConnectionError or hangs."""
    if info.enabled and dist.is_initialized():
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
