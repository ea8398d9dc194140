"""What every benchmark in this folder shares: machine facts, thread-pool sizing, peak-memory
probes and writing the results (JSON, CSV, PNG). Imports no torch at module level."""
import json
import os
import platform
import sys

try:
    import resource
except ImportError:  # not on Windows
    resource = None


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (else what ``platform`` knows)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average():
    """The 1, 5 and 15 minute load averages, or None where the OS does not say."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def threads_from_argv(argv) -> str:
    """The value of ``--threads`` in ``argv`` (``"1"`` when absent)."""
    for i, a in enumerate(argv):
        if a == "--threads" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--threads="):
            return a.split("=", 1)[1]
    return "1"


def size_thread_pools_from_argv() -> None:
    """Set ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` (unless set) from ``--threads`` in
    ``sys.argv``. Call before torch is imported, so its OpenMP/MKL pools start at that size."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, threads_from_argv(sys.argv[1:]))


def make_sync(device):
    """A no-argument function that waits for ``device`` (CUDA) or does nothing (CPU)."""
    if device.type == "cuda":
        import torch

        return lambda: torch.cuda.synchronize(device)
    return lambda: None


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
    """Reset this process's peak-RSS mark (VmHWM) to its current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def maxrss_mb() -> float:
    if resource is None:
        return float("nan")
    m = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return m / 2 ** 20 if sys.platform == "darwin" else m / 2 ** 10  # bytes on macOS, KiB on Linux


def peak_mb() -> float:
    """Peak RSS in MiB: VmHWM where /proc has it, else ``ru_maxrss``."""
    hwm = proc_status_mb("VmHWM")
    return hwm if hwm == hwm else maxrss_mb()


def save_results(out_dir: str, name: str, record: dict, write_csv, plot, plot_args,
                 indent: int = 2, summary: str = "") -> None:
    """Write ``<out_dir>/<name>.json`` (``{"benchmark": name, **record}``), ``.csv`` (via
    ``write_csv(path, record["results"])``) and ``.png`` (via ``plot(path, results, env,
    plot_args)``), then print where they went and ``summary``."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {ext: os.path.join(out_dir, f"{name}.{ext}") for ext in ("json", "csv", "png")}
    with open(paths["json"], "w") as f:
        json.dump({"benchmark": name, **record}, f, indent=indent)
    write_csv(paths["csv"], record["results"])
    plot(paths["png"], record["results"], record["environment"], plot_args)
    print("wrote " + ", ".join(os.path.relpath(p) for p in paths.values()) + f"  ({summary})")
