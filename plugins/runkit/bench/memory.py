"""Peak memory, in MiB (2**20 bytes): the process's resident set on the CPU, the caching
allocator's peak on CUDA, and the activations autograd saves for backward.

For a clean figure measure in a fresh process (:mod:`.child`): on Linux ``ru_maxrss`` keeps the
peak of the process image before ``exec`` (the forked parent's), so the CPU figure here is the
kernel's ``VmHWM`` (the counter behind ``ru_maxrss``), reset through ``/proc/self/clear_refs`` to
the RSS of the moment the baseline is taken, minus that RSS.
"""
from __future__ import annotations

import sys
from typing import Callable, Dict, Sequence

try:
    import resource
except ImportError:  # not on Windows
    resource = None


def proc_status_mb(field: str) -> float:
    """``VmRSS`` / ``VmHWM`` of this process image from ``/proc/self/status``, in MiB (NaN if
    unknown)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 2 ** 10  # kB
    except (OSError, ValueError, IndexError):
        pass
    return float("nan")


def reset_peak_rss() -> bool:
    """Reset this process's peak-RSS mark (VmHWM) to its current RSS (Linux >= 4.0); whether
    it could."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def maxrss_mb() -> float:
    """``ru_maxrss`` in MiB (NaN without ``getrusage``)."""
    if resource is None:
        return float("nan")
    m = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return m / 2 ** 20 if sys.platform == "darwin" else m / 2 ** 10  # bytes on macOS, KiB on Linux


def peak_mb() -> float:
    """Peak RSS in MiB: VmHWM where /proc has it, else ``ru_maxrss``."""
    hwm = proc_status_mb("VmHWM")
    return hwm if hwm == hwm else maxrss_mb()


class PeakMeter:
    """Peak memory above a baseline taken by :meth:`start`, MiB.

    CPU: peak RSS (VmHWM, reset at :meth:`start`) minus the RSS then; where the reset is not
    possible, VmHWM minus VmHWM at :meth:`start`. CUDA: ``torch.cuda.max_memory_allocated``
    minus the memory allocated at :meth:`start` (:meth:`rss_rise_mb` still gives the CPU figure).
    """

    def __init__(self, device):
        self.device = device
        self.cuda = getattr(device, "type", str(device)) == "cuda"

    def start(self) -> dict:
        """Take the baseline now. Returns ``hwm_reset`` (whether VmHWM could be reset),
        ``baseline_rss_mb`` and ``baseline_peak_mb``."""
        if self.cuda:
            import torch

            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base_alloc = torch.cuda.memory_allocated(self.device)
        self.hwm_reset = reset_peak_rss()
        self.baseline_rss_mb = proc_status_mb("VmRSS")
        self.baseline_peak_mb = peak_mb()
        self.base_mb = self.baseline_rss_mb if self.hwm_reset else self.baseline_peak_mb
        return {"hwm_reset": self.hwm_reset, "baseline_rss_mb": self.baseline_rss_mb,
                "baseline_peak_mb": self.baseline_peak_mb}

    def rearm(self) -> None:
        """Forget the peak so far (not the baseline): the next reading is the peak from now on
        (on the CPU from the current RSS, which is <= any earlier peak)."""
        if self.hwm_reset:
            reset_peak_rss()
        if self.cuda:
            import torch

            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)

    def rss_rise_mb(self) -> float:
        """Peak RSS over the baseline, MiB."""
        return peak_mb() - self.base_mb

    def rise_mb(self) -> float:
        """The device's figure: :meth:`rss_rise_mb` on the CPU, the CUDA allocator's peak over
        its baseline on CUDA, MiB."""
        if not self.cuda:
            return self.rss_rise_mb()
        import torch

        torch.cuda.synchronize(self.device)
        return (torch.cuda.max_memory_allocated(self.device) - self.base_alloc) / 2 ** 20

    def metric(self, when: str) -> str:
        """What :meth:`rise_mb` measures, for a result file; ``when``: the baseline's moment
        (``"before build"``)."""
        if self.cuda:
            return f"torch.cuda.max_memory_allocated - allocated {when}"
        if self.hwm_reset:
            return f"peak RSS (VmHWM, reset {when}) - RSS {when}"
        return f"VmHWM(end) - VmHWM({when})"


def saved_activations_mb(fn: Callable[[], object], params: Sequence) -> float:
    """MiB of the distinct tensor storages autograd saves for backward while ``fn`` runs,
    ``params`` excluded: the activation memory of the graphs, independent of the allocator.
    (All of them stay alive until their backward, so no two share an address.)"""
    import torch

    skip = {p.untyped_storage().data_ptr() for p in params}
    seen: Dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values()) / 2 ** 20
