"""What every benchmark command shares about its own process: the machine it names in its report, one
torch thread while it runs, and a SIGTERM that unwinds (so that `finally` blocks stop the SuperLinks)."""

from __future__ import annotations

import os
import platform
import signal
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def machine() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU only"
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores, {gpu}"


@contextmanager
def benchmark_process() -> Iterator[None]:
    """One torch thread and SIGTERM raising SystemExit for the block; the previous settings afterwards.

    The models are small: a second thread only contends with the federation's processes (on a busy 2-core
    machine one epoch of HyDiscGAN's alignment stage took 4 s on one thread, 190 s on two).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    on_sigterm = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, on_sigterm)
        torch.set_num_threads(threads)


def _exit_on_sigterm(signum, frame) -> None:  # noqa: ANN001
    raise SystemExit(128 + signum)
