"""GPU placement for the local pool: one job per CUDA device at a time, the device with most free memory first.

Devices are read from `nvidia-smi` (the driver's view, honouring CUDA_VISIBLE_DEVICES), so the daemon
never imports torch just to look. The chosen device is handed to the job's process as its only visible device.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
from collections.abc import Callable

log = logging.getLogger(__name__)
Probe = Callable[[], list[tuple[int, int]]]  # (device index, free MiB) of every visible device


def nvidia_smi_free_memory() -> list[tuple[int, int]]:
    """Free memory of each visible CUDA device; [] without a driver or a device."""
    binary = shutil.which("nvidia-smi")
    if binary is None:
        return []
    try:
        out = subprocess.run([binary, "--query-gpu=index,memory.free", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError) as e:
        log.warning("nvidia-smi failed, treating this machine as having no GPU: %s", e)
        return []
    devices = [(int(index), int(free)) for index, free in (line.split(",") for line in out.splitlines() if line)]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        allowed = {int(d) for d in visible.split(",") if d.strip().isdigit()}
        devices = [d for d in devices if d[0] in allowed]
    return devices


class GpuSlots:
    """Hands out CUDA devices to jobs, one job per device; None (the CPU) when the machine has none."""

    def __init__(self, probe: Probe = nvidia_smi_free_memory):
        self.probe = probe
        self._devices: list[int] | None = None
        self._busy: set[int] = set()
        self._freed = asyncio.Condition()
        self._warned = False

    async def acquire(self) -> int | None:
        """A free device, the one with most free memory; waits while all are busy; None without a GPU."""
        if self._devices is None:
            self._devices = [index for index, _ in await asyncio.to_thread(self.probe)]
        if not self._devices:
            self._warn_once()
            return None
        async with self._freed:
            await self._freed.wait_for(lambda: len(self._busy) < len(self._devices or []))
            free = dict(await asyncio.to_thread(self.probe))
            idle = [d for d in self._devices if d not in self._busy]
            device = max(idle, key=lambda d: free.get(d, -1))
            self._busy.add(device)
            return device

    async def release(self, device: int | None) -> None:
        if device is None:
            return
        async with self._freed:
            self._busy.discard(device)
            self._freed.notify()

    def _warn_once(self) -> None:
        if not self._warned:
            self._warned = True
            log.warning("a model asks for a GPU but this machine has none visible: training it on the CPU")
