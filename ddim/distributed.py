"""Data-parallel helpers for ``torchrun``: a process-group context whose collectives are no-ops alone.

``torchrun --nproc_per_node N`` starts N copies of a program with ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK`` in the environment. ``Context.from_env`` joins that group (NCCL on CUDA, gloo on the
CPU) only when ``WORLD_SIZE > 1``; in a plain process it returns a one-rank context and never touches
``torch.distributed``. Library code therefore never requires a process group.

Small control messages (stop flags, "did rank 0's write succeed?") go over a CPU/gloo group even when
the gradients go over NCCL, so agreeing on them never waits for the GPU.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from ddim.errors import DDIMError
from ddim.runtime import resolve_device

R = TypeVar("R")


def env_world() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from the torchrun environment; (0, 1, 0) outside torchrun."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise DDIMError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (set by torchrun)") from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise DDIMError(f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local}")
    return rank, world, local


def shard(n: int, rank: int, world: int, what: str = "--batch-size") -> slice:
    """Rank ``rank``'s contiguous slice of ``n`` items split evenly over ``world`` ranks."""
    if n % world:
        raise DDIMError(f"{what} {n} is the global batch and must be divisible by the {world} ranks; change it")
    per = n // world
    return slice(rank * per, (rank + 1) * per)


@dataclass
class Context:
    """Where this process sits in a data-parallel job, and the few collectives training needs."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # we initialised the process group, so we tear it down
    cpu_group: Any = None  # gloo group for control messages (None: the default group)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @classmethod
    @contextmanager
    def from_env(cls, device: str = "auto") -> Iterator[Context]:
        """Join the torchrun process group if there is one; leave it on exit if we created it."""
        if dist.is_available() and dist.is_initialized():  # the caller set the group up
            rank, world = dist.get_rank(), dist.get_world_size()
            local = int(os.environ.get("LOCAL_RANK", rank))
        else:
            rank, world, local = env_world()
        dev = resolve_device(device)
        if world > 1 and dev.type == "cuda":
            if dev.index is not None and device != "auto":
                raise DDIMError(f"--device {device} under torchrun: use --device cuda; each rank takes cuda:LOCAL_RANK")
            if local >= torch.cuda.device_count():
                raise DDIMError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} GPU(s) on this node")
            dev = torch.device("cuda", local)
            torch.cuda.set_device(dev)
        ctx = cls(rank, world, local, dev)
        if world > 1 and not dist.is_initialized():
            if not dist.is_available():
                raise DDIMError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
            cuda = dev.type == "cuda"
            dist.init_process_group("nccl" if cuda else "gloo", device_id=dev if cuda else None)
            ctx.owns_group = True
        if world > 1 and dist.get_backend() != "gloo":
            ctx.cpu_group = dist.new_group(backend="gloo")
        try:
            yield ctx
            if ctx.owns_group:  # normal exit: let every rank finish its last collective before teardown
                dist.barrier(group=ctx.cpu_group)
        finally:
            if ctx.owns_group and dist.is_initialized():
                dist.destroy_process_group()

    # --- collectives (all no-ops on one rank) -------------------------------------------------

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on any rank (a CPU all-reduce: no GPU sync)."""
        if not self.enabled:
            return flag
        t = torch.tensor([int(flag)], dtype=torch.int32)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.cpu_group)
        return bool(t.item())

    def all_reduce(self, t: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """In-place all-reduce of a tensor on this rank's device (``sum``, ``min`` or ``max``)."""
        if self.enabled:
            ops = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}
            dist.all_reduce(t, op=ops[op])
        return t

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (pickled over the CPU group)."""
        if not self.enabled:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0, group=self.cpu_group)
        return box[0]

    def _agree(self, fn: Callable[[], R], share: bool) -> Any:
        result: Any = None
        error: str | None = None
        failure: BaseException | None = None
        if self.is_main:
            try:
                result = fn()
            except DDIMError as exc:
                error = str(exc)
            except BaseException as exc:  # a bug or Ctrl-C on rank 0: still release the other ranks
                error, failure = f"rank 0 failed: {type(exc).__name__}: {exc}", exc
        error, shared = self.broadcast((error, result if share else None))
        if failure is not None:
            raise failure
        if error is not None:
            raise DDIMError(error)
        return shared if share else result

    def on_main(self, fn: Callable[[], R]) -> R | None:
        """Run ``fn`` on rank 0 only and agree on the outcome: a ``DDIMError`` there is raised on every
        rank (so no rank waits forever for a peer that gave up). Returns ``fn()`` on rank 0, else None.
        Doubles as a barrier: no rank passes it before rank 0 has finished ``fn``."""
        if not self.enabled:
            return fn()
        return self._agree(fn, share=False)

    def share(self, fn: Callable[[], R]) -> R:
        """Compute ``fn()`` on rank 0 and hand its result (or its ``DDIMError``) to every rank."""
        if not self.enabled:
            return fn()
        return self._agree(fn, share=True)
