"""Process set-up shared by every stage: threads, allocator, device, seeds, progress display."""

from __future__ import annotations

import ctypes
import json
import logging
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from dpt_repro import distributed
from dpt_repro.config import BaseConfig
from dpt_repro.errors import UserError

log = logging.getLogger("dpt_repro")

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def tune_allocator() -> None:
    """Keep glibc from mmap/munmap-ing every large activation: 1.5-2x faster CPU training steps."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30)
        libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
    except (OSError, AttributeError):
        pass


def setup(base: BaseConfig):
    """Threads, allocator and device for a stage; returns the torch.device to use."""
    import torch

    tune_allocator()
    # Denormal floats run ~10x slower on x86 CPUs; they appear when updates get tiny (a diffusion run at low
    # learning rate went from 1 s to 7.7 s per step). Flushing them to zero changes nothing measurable.
    torch.set_flush_denormal(True)
    if base.threads > 0:
        torch.set_num_threads(base.threads)
    if base.device == "cuda" and not torch.cuda.is_available():
        raise UserError("base.device is 'cuda' but no CUDA device is available (use 'auto' or 'cpu')")
    name = "cuda" if base.device == "auto" and torch.cuda.is_available() else base.device
    device = torch.device("cpu" if name == "auto" else name)
    if device.type == "cuda":
        # Every stage feeds fixed shapes, so cuDNN's per-shape search for the fastest convolution pays off.
        torch.backends.cudnn.benchmark = True
    if device.type == "cuda" and distributed.world_size() > 1:
        device = torch.device("cuda", distributed.local_rank())  # one GPU per process
        torch.cuda.set_device(device)
    distributed.init(device.type)
    return device


def hardware(device) -> str:
    """The device in words, recorded with results: a GPU's name, or the CPU's model, whether it computes bf16
    (which sets stage 2's precision) and the thread count. Two 2-core CPUs can be a factor 2 apart."""
    import platform

    import torch

    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(device)
    model = cpu_model() or f"{platform.machine()} CPU"
    bf16 = ", native bf16" if cpu_has_native_bf16() else ""
    return f"{model}{bf16}, {torch.get_num_threads()} threads"


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX). Elsewhere oneDNN emulates bf16 and an
    autocast step is slower than float32, so stage 2's `precision` falls back to float32 there."""
    import torch

    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def cpu_model() -> str:
    """The CPU's model name as Linux reports it ("" elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def generator(seed: int, *stream: int):
    """A torch.Generator for one (seed, stream...) tuple: resuming at step k draws what step k drew."""
    import numpy as np
    import torch

    state = np.random.SeedSequence([seed, *stream]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at each line, not the one it was made with: a caller that swaps the
    stream between two commands of one process (a test runner, a notebook, a redirect) and closes the old one
    would otherwise get "--- Logging error ---" tracebacks for every line of the second command."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def configure_logging() -> None:
    """INFO lines from this package only; the libraries (GX, MLflow, DVC) stay at WARNING."""
    if log.handlers:
        return
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


class Progress:
    """A rich progress bar on a terminal; one plain log line every `every` seconds otherwise (DVC, CI)."""

    def __init__(self, description: str, total: int, every: float = 30.0):
        self.description, self.total, self.every = description, total, every
        self.interactive = sys.stderr.isatty() and distributed.is_main()
        self.quiet = not distributed.is_main()
        self._bar = None
        self._last = 0.0
        self._done = 0
        self.info = ""

    def __enter__(self) -> "Progress":
        if self.interactive:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                                     console=Console(stderr=True))
            self._bar.__enter__()
            self._task = self._bar.add_task(self.description, total=self.total, info="")
        self._start = self._last = time.monotonic()
        return self

    def update(self, advance: int = 1, info: str = "") -> None:
        self._done += advance
        self.info = info or self.info
        if self._bar is not None:
            self._bar.update(self._task, advance=advance, info=self.info)
            return
        now = time.monotonic()
        if self.quiet:
            return
        if now - self._last >= self.every or self._done >= self.total:
            self._last = now
            log.info("%s %d/%d %s (%.0fs)", self.description, self._done, self.total, self.info, now - self._start)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)


@contextmanager
def timed(stage: str, run_key: str) -> Iterator[None]:
    """Log a stage's wall time and append it to .dpt/timings.jsonl (ignored by git) for timing whole runs."""
    start = time.perf_counter()
    yield
    seconds = time.perf_counter() - start
    if not distributed.is_main():
        return
    log.info("%s took %.1fs", stage, seconds)
    path = Path(".dpt") / "timings.jsonl"
    path.parent.mkdir(exist_ok=True)
    with open(path, "a") as fh:
        fh.write(json.dumps({"stage": stage, "run_key": run_key, "seconds": round(seconds, 2),
                             "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")
