"""Wall time and peak memory of a block of work (fitting a generator, sampling), for cost tables.

On a GPU the peak is ``torch.cuda.max_memory_allocated`` over the block. On a CPU it is the peak
resident set size of the process while the block runs, sampled from ``/proc/self/statm`` by a
background thread every 20 ms: ``resource.getrusage`` only knows the peak over the process's whole
life, which would charge a cheap block for an earlier expensive one. Where ``/proc`` is missing
(not Linux) the lifetime peak is reported instead, and said so in ``memory_source``.
"""

from __future__ import annotations

import os
import resource
import threading
import time
from dataclasses import dataclass

import torch

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * _PAGE
    except OSError:
        return None


@dataclass
class Cost:
    seconds: float = 0.0
    peak_memory_mb: float = 0.0
    memory_source: str = ""

    def as_dict(self) -> dict:
        return {
            "seconds": round(self.seconds, 3),
            "peak_memory_mb": round(self.peak_memory_mb, 1),
            "memory_source": self.memory_source,
        }


class measure:
    """``with measure(device) as cost: ...`` fills ``cost.seconds`` and ``cost.peak_memory_mb``."""

    def __init__(self, device: str | torch.device = "cpu", interval: float = 0.02) -> None:
        self.device = torch.device(device)
        self.interval = interval
        self.cost = Cost()
        self._peak = 0
        self._stop = threading.Event()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, _rss_bytes() or 0)
            self._stop.wait(self.interval)

    def __enter__(self) -> Cost:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif _rss_bytes() is not None:
            self._peak = _rss_bytes()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        self._start = time.perf_counter()
        return self.cost

    def __exit__(self, *exc) -> None:
        self.cost.seconds = time.perf_counter() - self._start
        if self.device.type == "cuda":
            self.cost.peak_memory_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
            self.cost.memory_source = "cuda_max_memory_allocated"
        elif hasattr(self, "_thread"):
            self._stop.set()
            self._thread.join()
            self._peak = max(self._peak, _rss_bytes() or 0)
            self.cost.peak_memory_mb = self._peak / 2**20
            self.cost.memory_source = "process_rss_peak_during_block"
        else:
            self.cost.peak_memory_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            self.cost.memory_source = "process_lifetime_maxrss"
