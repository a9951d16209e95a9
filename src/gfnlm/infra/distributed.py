"""The processes of one run, and the few collectives gfnlm needs, through Hugging Face Accelerate.

Started by ``torchrun`` or ``accelerate launch`` (WORLD_SIZE > 1), every process builds an
``Accelerator``: DDP over gloo (CPU) or NCCL (GPUs), the device the launcher gives each process.
A plain single process builds nothing: world size 1, the device from ``resolve_device``, and every
collective returns its input, so a single process runs exactly as it would without this file.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import sys
from typing import NoReturn

import torch

from gfnlm.infra.device import resolve_device
from gfnlm.infra.errors import GfnlmError
from gfnlm.infra.seeding import stream_seed, torch_generator

# DDP only: sampling and rewards run the unwrapped model, which needs whole weights on every process
# (FSDP and DeepSpeed ZeRO-3 shard them); the LoRA state that DDP replicates is small anyway.
SUPPORTED = ("MULTI_CPU", "MULTI_GPU")


class Processes:
    """This process's place in the run: rank, world size, device; collectives over all processes."""

    def __init__(self, device: torch.device, accelerator=None):
        self.device = device
        self.accelerator = accelerator
        self.rank = accelerator.process_index if accelerator is not None else 0
        self.world_size = accelerator.num_processes if accelerator is not None else 1
        self.is_main = self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.accelerator is not None

    def prepare(self, module: torch.nn.Module) -> torch.nn.Module:
        """Wrap a module whose forward is the loss pass for gradient all-reduce (DDP); unchanged for one process."""
        # The module is already on this process's device (quantized weights must not be moved again).
        return self.accelerator.prepare_model(module, device_placement=False) if self.distributed else module

    def no_sync(self, module: torch.nn.Module):
        """Accumulate gradients locally (a micro-batch that is not the step's last)."""
        return self.accelerator.no_sync(module) if self.distributed else contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        if self.distributed:
            self.accelerator.backward(loss)
        else:
            loss.backward()

    def gather(self, obj) -> list:
        """Every process's ``obj``, in rank order, on every process."""
        if not self.distributed:
            return [obj]
        from accelerate.utils import gather_object

        return gather_object([obj])

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every process."""
        if not self.distributed:
            return obj
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([obj], from_process=0)[0]

    def any(self, flag: bool) -> bool:
        return any(self.gather(bool(flag)))

    def agree(self, error: str | None) -> None:
        """Raise the same GfnlmError on every process when any of them has one, so none waits forever."""
        errors = [e for e in self.gather(error) if e]
        if errors:
            raise GfnlmError(errors[0])

    def barrier(self) -> None:
        if self.distributed:
            self.accelerator.wait_for_everyone()

    def close(self) -> None:
        """Leave the process group together: destroying it while another rank is still working (rank 0
        evaluates alone) can hang gloo at exit. The group's timeout (LEAVE_TIMEOUT) covers a long evaluation."""
        if self.distributed and torch.distributed.is_initialized():
            self.barrier()
            torch.distributed.destroy_process_group()


def leave(status: int) -> NoReturn:
    """End a launched process once its command is done (its files written, the group left) without the
    interpreter's teardown: torch's worker threads (gloo, the autograd engine) can race it and hang the
    process now and then (pytorch#75097, #190489), and the launcher would wait for it forever."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


_current: Processes | None = None
# How long a rank may wait at a collective, e.g. the others for rank 0's evaluation before they leave.
LEAVE_TIMEOUT = datetime.timedelta(hours=6)


def launched_processes() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1") or 1)
    except ValueError:
        return 1


def start(device: str = "auto") -> Processes:
    """The Processes of this run: Accelerate under a launcher, else one process on ``resolve_device``."""
    global _current
    world = launched_processes()
    if world <= 1 and os.environ.get("MASTER_ADDR") and os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true":
        # `accelerate launch --cpu --num_processes N` starts one process unless MPI is set up.
        raise GfnlmError("accelerate launch --cpu started a single process; for several CPU processes use "
                         "`torchrun --nproc_per_node N -m gfnlm.cli -- train ...` or `accelerate launch "
                         "--multi_gpu --num_processes N -m gfnlm.cli train ...` (also without GPUs).")
    if world <= 1:
        _current = Processes(resolve_device(device))
        return _current
    if device not in ("auto", "cpu", "cuda"):
        raise GfnlmError(f"device {device!r} cannot be shared by {world} processes: each takes the device the "
                         "launcher gives it. Set device: auto (one GPU per process where there are GPUs) or cpu.")
    if device == "cuda" and not torch.cuda.is_available():
        raise GfnlmError("device 'cuda' was requested but CUDA is not available; use device: auto or cpu.")
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    # Without cpu=True Accelerate treats processes on a machine without GPUs as one process.
    cpu = device == "cpu" or not torch.cuda.is_available()
    accelerator = Accelerator(cpu=cpu, kwargs_handlers=[InitProcessGroupKwargs(timeout=LEAVE_TIMEOUT)])
    kind = accelerator.distributed_type.name
    if kind not in SUPPORTED:
        raise GfnlmError(f"Accelerate is configured for {kind}; gfnlm trains with DDP (plain multi-GPU or "
                         "multi-CPU), since sampling needs whole weights on every process. Fit a large model "
                         "with dtype: bfloat16, load_in_4bit and gradient_checkpointing instead.")
    if accelerator.mixed_precision not in ("no", "bf16"):
        raise GfnlmError(f"Accelerate mixed precision {accelerator.mixed_precision!r} is not supported; launch "
                         "with --mixed_precision no and set dtype: bfloat16 in the gfnlm config.")
    _current = Processes(accelerator.device, accelerator)
    return _current


def current() -> Processes:
    """The Processes started last, or a single process when none was started."""
    return _current if _current is not None else Processes(torch.device("cpu"))


def process_generator(seed: int, device, processes: Processes | None = None):
    """A torch generator for this process's share of a sampled evaluation: rank 0 draws with ``seed``
    itself (one process gives the same samples as before), every other rank its own stream."""
    return torch_generator(device, stream_seed(seed, (processes or current()).rank))


def share(n: int, processes: Processes | None = None) -> int:
    """How many of ``n`` items this process takes (the first n % world_size ranks take one more)."""
    p = processes or current()
    return n // p.world_size + (p.rank < n % p.world_size)


def my_range(n: int, processes: Processes | None = None) -> range:
    """The indices of ``n`` items this process takes: contiguous blocks in rank order, sized by ``share``."""
    p = processes or current()
    start = p.rank * (n // p.world_size) + min(p.rank, n % p.world_size)
    return range(start, start + share(n, p))


def gather_flat(items: list, processes: Processes | None = None) -> list:
    """Every process's list of items, concatenated in rank order, on every process."""
    return [item for part in (processes or current()).gather(list(items)) for item in part]
