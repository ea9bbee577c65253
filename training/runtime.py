"""Where training runs: the device, mixed precision, and the ranks of a distributed run.

``Runtime.from_environment`` reads ``--device`` and torchrun's environment without side effects,
so that bad values end the command before any data is loaded; ``Runtime.session`` then joins
the process group (gloo on CPU, NCCL on CUDA) for the length of the run. A run without
torchrun's variables is one process, exactly as before.

Data parallelism is PyTorch's ``DistributedDataParallel`` (``Runtime.wrap``): every rank
computes its share of each global batch, DDP averages the gradients, and every rank applies
the same update, so parameters and switch scores stay identical. BatchNorm running statistics
are per rank while training and averaged over the ranks (``average_buffers``) before a
checkpoint or an evaluation reads them; the re-estimation after budget-aware training runs on
rank 0 and is broadcast (``broadcast_buffers``). Only rank 0 writes files and prints.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from training.console import console
from training.errors import RunError

__all__ = ["DEVICES", "TORCHRUN_VARIABLES", "Runtime", "torchrun_ranks"]

DEVICES = ("auto", "cpu", "cuda")
#: What torchrun sets for every process; all or none of them must be present.
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
#: How long a rank waits for the others in one collective before the run fails.
COLLECTIVE_TIMEOUT = timedelta(minutes=30)


def torchrun_ranks(environ: Mapping[str, str] = os.environ) -> tuple[int, int, int] | None:
    """(rank, world size, local rank) from torchrun's variables; None when none is set.
    ``RunError`` when only some are set or a value is not a valid rank."""
    present = [name for name in TORCHRUN_VARIABLES if environ.get(name)]
    if not present:
        return None
    missing = [name for name in TORCHRUN_VARIABLES if not environ.get(name)]
    if missing:
        raise RunError(
            f"distributed environment half set: {', '.join(present)} set but "
            f"{', '.join(missing)} missing; launch with torchrun, or unset them for one process"
        )
    try:
        rank, world, local = (int(environ[n]) for n in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    except ValueError:
        values = ", ".join(f"{n}={environ[n]!r}" for n in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
        raise RunError(f"distributed environment: ranks must be integers ({values})") from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise RunError(
            f"distributed environment: need 0 <= RANK < WORLD_SIZE and LOCAL_RANK >= 0, "
            f"got RANK={rank} WORLD_SIZE={world} LOCAL_RANK={local}"
        )
    return rank, world, local


def _device(name: str, local_rank: int) -> torch.device:
    if name not in DEVICES:
        raise ValueError(f"unknown device {name!r}; choose one of {', '.join(DEVICES)}")
    if name == "cuda" and not torch.cuda.is_available():
        built = torch.version.cuda or "none"
        raise RunError(
            f"--device cuda: no CUDA device is available (torch {torch.__version__}, built for "
            f"CUDA {built}); use --device cpu or auto"
        )
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise RunError(f"local rank {local_rank} has no GPU: this machine has {count}")
    return torch.device("cuda", local_rank)


_CPU = torch.device("cpu")
ModuleT = TypeVar("ModuleT", bound=nn.Module)


@dataclass(frozen=True)
class Runtime:
    """Device, rank and world size of this process; ``workers`` data-loader processes."""

    device: torch.device = _CPU
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    workers: int = 0

    @classmethod
    def from_environment(cls, device: str = "auto", workers: int = 0) -> Runtime:
        """Validate ``--device``, ``--workers`` and torchrun's variables; starts nothing."""
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        ranks = torchrun_ranks()
        rank, world, local = ranks if ranks is not None else (0, 1, 0)
        return cls(_device(device, local), rank, world, local, workers)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def amp_dtype(self) -> torch.dtype | None:
        """Autocast dtype: bfloat16 on GPUs that have it, else float16; None (fp32) on CPU."""
        if not self.cuda:
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.cuda else torch.contiguous_format

    def place(self, module: ModuleT) -> ModuleT:
        """``module`` on this device (channels-last on CUDA, where convolutions prefer it)."""
        module.to(self.device)
        if self.cuda:
            module.to(memory_format=torch.channels_last)
        return module

    def check_batch_size(self, batch_size: int) -> None:
        """A global batch must split evenly over the ranks (each takes the same share)."""
        if batch_size % self.world_size:
            raise ValueError(
                f"batch size {batch_size} (per domain and step, over all ranks) is not "
                f"divisible by the world size {self.world_size}"
            )

    @contextlib.contextmanager
    def session(self) -> Iterator[Runtime]:
        """Join the process group for a distributed run (and leave it at the end); only rank 0
        prints. One process: nothing to do."""
        if self.cuda:
            torch.cuda.set_device(self.device)
            torch.backends.cudnn.benchmark = True
        if not self.distributed:
            yield self
            return
        quiet = console.quiet
        console.quiet = not self.is_main
        dist.init_process_group(
            "nccl" if self.cuda else "gloo",
            timeout=COLLECTIVE_TIMEOUT,
            device_id=self.device if self.cuda else None,
        )
        try:
            yield self
            # leave together: rank 0 alone prunes, times and writes after the last collective,
            # and a rank that tears its group down early can abort in gloo's threads
            dist.barrier()
        finally:
            dist.destroy_process_group()
            console.quiet = quiet

    @contextlib.contextmanager
    def local_first(self) -> Iterator[None]:
        """Local rank 0 of every node runs the block first (e.g. builds the data cache), the
        other ranks after it (and find the cache built)."""
        if self.distributed and self.local_rank != 0:
            dist.barrier()
        yield
        if self.distributed and self.local_rank == 0:
            dist.barrier()

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        dtype = self.amp_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """Loss scaling for float16 autocast; None where it is not needed."""
        if self.amp_dtype != torch.float16:
            return None
        return torch.amp.GradScaler(self.device.type)

    def wrap(self, module: nn.Module) -> nn.Module:
        """``module`` under DDP in a distributed run (gradients averaged over the ranks), else
        itself. Domains use their own BatchNorm sets and heads, so a step's forward leaves
        some parameters unused: ``find_unused_parameters``."""
        if not self.distributed:
            return module
        return DistributedDataParallel(
            module,
            device_ids=[self.device.index] if self.cuda else None,
            find_unused_parameters=True,
            forward_sync_buffers=False,  # BN statistics: averaged by average_buffers
        )

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over the ranks (in place; returned for convenience)."""
        if self.distributed:
            on_device = tensor.to(self.device)
            dist.all_reduce(on_device)
            tensor.copy_(on_device)
        return tensor

    @torch.no_grad()
    def broadcast_buffers(self, module: nn.Module) -> None:
        """Every buffer of ``module`` (BatchNorm statistics, batch counts) as rank 0 holds it."""
        if self.distributed:
            for buffer in module.buffers():
                dist.broadcast(buffer, src=0)

    @torch.no_grad()
    def average_buffers(self, module: nn.Module) -> None:
        """Every floating-point buffer (BatchNorm running mean and variance) averaged over the
        ranks, so that all hold the same statistics."""
        if not self.distributed:
            return
        for buffer in module.buffers():
            if buffer.is_floating_point():
                dist.all_reduce(buffer)
                buffer.div_(self.world_size)

    def loader_options(self) -> dict[str, Any]:
        """``TrainBatches`` keywords for this process: its rank's share, workers, device."""
        return {
            "rank": self.rank,
            "world_size": self.world_size,
            "workers": self.workers,
            "device": self.device,
            "memory_format": self.memory_format(),
        }

    def full_precision(self) -> contextlib.AbstractContextManager[Any]:
        """No TF32 in convolutions and matrix products (exactness checks on GPUs)."""
        if not self.cuda:
            return contextlib.nullcontext()
        stack = contextlib.ExitStack()
        stack.enter_context(torch.backends.cudnn.flags(enabled=True, allow_tf32=False))
        previous = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        stack.callback(setattr, torch.backends.cuda.matmul, "allow_tf32", previous)
        return stack
