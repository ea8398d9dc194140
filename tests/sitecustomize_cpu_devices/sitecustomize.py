"""Test harness only (put this folder on PYTHONPATH): lets solo-learn's GPU configs run on CPUs.

solo-learn scales learning rates by ``len(cfg.devices)`` and so wants ``devices: [0, 1]``, but
Lightning's CPU accelerator only takes a count (``devices selected with CPUAccelerator should be
an int > 0``). This maps a list to its length in ``_parse_cpu_cores`` of both Lightning CPU
accelerator modules, when they are first imported (nothing is imported here). Lightning's DDP
launcher re-runs the script in child processes with the same environment, so they get it too.
Never part of the package: it exists so that the unmodified ``main_pretrain.py`` can run the
shipped ``strategy: ddp`` configs with 2 CPU processes in the tests.
"""
import importlib.abc
import sys

_TARGETS = {"lightning.fabric.accelerators.cpu", "lightning.pytorch.accelerators.cpu"}


def _patch(module):
    original = module._parse_cpu_cores

    def _parse_cpu_cores(cpu_cores):
        if isinstance(cpu_cores, (list, tuple)):
            cpu_cores = len(cpu_cores)
        return original(cpu_cores)

    module._parse_cpu_cores = _parse_cpu_cores


class _PatchCPUDevices(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in _TARGETS:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            _patch(module)

        spec.loader.exec_module = exec_and_patch
        return spec


sys.meta_path.insert(0, _PatchCPUDevices())
