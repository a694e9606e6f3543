"""Data-parallel stages under `torchrun`: who am I, split the work, gather the results, wait for the others.

`launcher.nproc_per_node` x `launcher.nnodes` > 1 makes the CLI re-run a stage's own command through
`torchrun` (`launch_command`). Each process then finds RANK, WORLD_SIZE and LOCAL_RANK in its environment; without
them every helper here is the single-process no-op, so the library code runs unchanged on a laptop.
Only rank 0 writes outputs and logs; `finish` holds every rank until rank 0 has written them, so the launcher
(and DVC after it) sees complete outputs.
"""

from __future__ import annotations

import datetime
import os
import sys

# Stages that run on every rank; the others (prepare, split, validate, report) always run as one process.
DATA_PARALLEL = ("stage1", "pseudo_label", "stage2", "sample", "fid_reference", "stage3", "evaluate")


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def launched() -> bool:
    """True inside a process that torchrun started (the CLI must not launch again)."""
    return "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ


def init(device_type: str) -> None:
    """Join the process group: NCCL between GPUs, gloo between CPU processes."""
    import torch.distributed as dist

    if world_size() > 1 and not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        # Rank 0 alone writes checkpoints and evaluates on the validation split; the others wait for it.
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=60))


def active() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    if active():
        import torch.distributed as dist

        dist.barrier()


def finish() -> None:
    """Every rank waits here for rank 0's writes, then leaves the process group."""
    if active():
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()


def rank_stream(*stream: int) -> tuple[int, ...]:
    """The random stream of this rank's batches: one process keeps its historical stream; each rank of a
    data-parallel run draws its own (`runtime.generator(seed, *rank_stream(...))`)."""
    return stream if world_size() == 1 else (*stream, 2, rank())


def run_identity() -> dict:
    """What a checkpoint's fingerprint must include: ranks draw other batches, so a checkpoint resumes only
    under the same process count (empty for one process, keeping single-process fingerprints as they were)."""
    return {"processes": world_size()} if world_size() > 1 else {}


def shard(n: int) -> slice:
    """This rank's contiguous part of n items; the parts of all ranks cover 0..n-1 once each."""
    w, r = world_size(), rank()
    return slice(r * n // w, (r + 1) * n // w)


def gather(array):
    """Concatenate every rank's part in rank order (the inverse of `shard`); every rank gets the result."""
    if not active():
        return array
    import torch.distributed as dist

    import numpy as np

    parts: list = [None] * world_size()
    dist.all_gather_object(parts, array)
    # A rank with no items (fewer items than ranks) may hold an array of another width, e.g. (0, 0).
    return np.concatenate([p for p in parts if len(p)] or parts[:1])


def broadcast(obj):
    """Rank 0's value of a small picklable object, on every rank."""
    if not active():
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_mean(tensor):
    """The mean of a tensor over ranks (keeps running statistics, such as FreeMatch's thresholds, identical)."""
    if not active():
        return tensor
    import torch.distributed as dist

    out = tensor.clone()
    dist.all_reduce(out)
    return out / world_size()


def launch_command(nproc_per_node: int, nnodes: int, rdzv_endpoint: str, rdzv_id: str,
                   argv: list[str]) -> list[str]:
    """The torchrun command that runs `dpt-repro <argv>` on this node's processes."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc_per_node}"]
    if nnodes == 1:
        cmd.append("--standalone")  # a free local port: several queued experiments may run at once
    else:
        cmd += [f"--nnodes={nnodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={rdzv_endpoint}",
                f"--rdzv-id={rdzv_id}"]
    return cmd + ["-m", "dpt_repro.cli", *argv]
