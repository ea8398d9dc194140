"""Test-wide settings."""
import os
from pathlib import Path

# One thread per process, in this one and in every process a test starts that does not size its
# own pools: the two pytest-xdist workers already fill the 2-core CI machine, and OpenMP threads
# of several processes competing for it spin instead of working (the gpu-check rehearsal took
# 222 s of wall time with the libraries' default of 2 threads beside a busy core, 190 s with 1).
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import torch  # noqa: E402  (after the thread settings, which torch reads when it loads)

import gradmatch.wilds  # noqa: E402, F401  (stops wilds' PyPI version check before any test imports wilds)

torch.set_num_threads(1)


# The longest files first. `make test` runs two pytest-xdist workers with `--dist loadfile`, which
# hands whole files to the workers in collection order: starting the longest ones first and
# leaving the short ones to fill in at the end keeps one worker from running a long file alone
# while the other idles (longest-processing-time-first scheduling). Seconds of setup and call per
# file on the 2-core CI machine (`pytest --durations=0`, docs/testing.md); a file not listed is
# short. A stale figure only changes the order, never what runs.
FILE_SECONDS = {
    "test_adios_solo.py": 340, "test_domainbed_harness.py": 235, "test_gpu_check.py": 193,
    "test_demo.py": 180, "test_adios_ddp.py": 174, "test_reproduce_domainbed.py": 106,
    "test_reproduce.py": 89, "test_wilds_distributed.py": 78, "test_wilds_runner.py": 56,
    "test_reproduce_adios.py": 34, "test_speed.py": 25, "test_official_oracle.py": 20,
}


def pytest_collection_modifyitems(items):
    """Order the files by :data:`FILE_SECONDS`, longest first; tests keep their order in a file."""
    items.sort(key=lambda item: -FILE_SECONDS.get(Path(str(item.fspath)).name, 0))
