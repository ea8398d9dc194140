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


def rusage() -> dict:
    """This process's CPU time so far (``user_s``, ``sys_s``) and minor page faults
    (``minflt``); zeros where the OS has no ``getrusage``."""
    if resource is None:
        return {"user_s": 0.0, "sys_s": 0.0, "minflt": 0}
    r = resource.getrusage(resource.RUSAGE_SELF)
    return {"user_s": r.ru_utime, "sys_s": r.ru_stime, "minflt": r.ru_minflt}


def summarize(samples, unit: str = "ms", scale: float = 1.0) -> dict:
    """Median, quartiles, IQR and minimum of timing ``samples`` (multiplied by ``scale``), keys
    suffixed with ``unit`` (``median_ms``, ...), and the count ``n``."""
    import numpy as np

    x = np.asarray(samples, dtype=np.float64) * scale
    q25, med, q75 = np.percentile(x, [25, 50, 75])
    return {f"median_{unit}": float(med), f"q25_{unit}": float(q25), f"q75_{unit}": float(q75),
            f"iqr_{unit}": float(q75 - q25), f"min_{unit}": float(x.min()), "n": int(x.size)}


def setup_torch(device_name: str, threads: int):
    """The ``torch.device`` to time on, with ``threads`` intra- and inter-op threads (the
    inter-op pool can only be sized once per process) and cuDNN autotuning on CUDA. Exits with
    a message if CUDA is asked for and missing."""
    import torch

    device = torch.device(device_name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for but torch.cuda.is_available() is False")
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:
        pass  # already fixed by earlier parallel work; the JSON records the actual value
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return device


def environment(device, **extra) -> dict:
    """Machine and library facts for a result file: date, Python, platform, torch (+
    torchvision, numpy), device, CPU model and count, thread pools, load average; the CUDA device
    where there is one; then ``extra``."""
    import datetime

    import numpy as np
    import torch

    env = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "python": sys.version.split()[0], "platform": platform.platform(),
        "torch": torch.__version__, "numpy": np.__version__, "device": str(device),
        "cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
        "torch_num_threads": torch.get_num_threads(),
        "torch_num_interop_threads": torch.get_num_interop_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "load_average_at_start": load_average(),
    }
    try:
        import torchvision
        env["torchvision"] = torchvision.__version__
    except ImportError:
        pass
    if getattr(device, "type", str(device)) == "cuda":
        env["cuda_device"] = torch.cuda.get_device_name(device)
        env["cuda_version"] = torch.version.cuda
    env.update(extra)
    return env


def machine_line(env: dict, threads: str) -> str:
    """``"<device> (<CPU or GPU model>), <threads>, torch <version>, <date>"`` for plot titles."""
    device = str(env["device"])
    hardware = env.get("cuda_device") if device.startswith("cuda") else env["cpu_model"]
    return f"{device} ({hardware}), {threads}, torch {env['torch']}, {env['date'][:10]}"
