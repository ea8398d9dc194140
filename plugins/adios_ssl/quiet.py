"""Known third-party warnings that say nothing about an ADIOS run, filtered in this package's
entry points (the ``adios-ssl`` command, ``python -m adios_ssl.<script>``, the probe), never at
import of a library module.

Each filter names the warning's text, category and the module it is raised in:

- those of :mod:`runkit.quiet`: torchmetrics' ``pkg_resources`` notice, timm's import-path
  FutureWarnings (solo-learn imports the old paths), loky's leaked semaphores at exit (joblib's
  process pool, used by scikit-learn in the probes);
- timm's registry ``Overwriting <model> in registry with solo.backbones...`` (solo-learn
  registers its own ConvNeXt/PoolFormer) and torch's ``torch.cuda.amp.custom_fwd(args...)``
  FutureWarning in ``solo.utils.whitening``, both raised while solo-learn is imported.

Child processes (Lightning's DDP ranks rerun the script; loky's resource tracker) get the
filters they can express through ``PYTHONWARNINGS`` (a literal message prefix, an exact module).
"""
from __future__ import annotations

from runkit.quiet import COMMON_CHILD_WARNINGS, COMMON_WARNINGS, install

#: (message regex, category, module regex) of the in-process filters
KNOWN_WARNINGS = COMMON_WARNINGS + (
    (r"Overwriting \w+ in registry with solo\.backbones\.", UserWarning, r"solo\.backbones(\.|$)"),
    (r"`torch\.cuda\.amp\.custom_fwd\(args\.\.\.\)` is deprecated", FutureWarning,
     r"solo\.utils\.whitening$"),
)
#: the same for child processes, in ``PYTHONWARNINGS`` syntax (action:message:category:module)
CHILD_WARNINGS = COMMON_CHILD_WARNINGS


def quiet_known_warnings() -> None:
    """Install the filters in this process and add :data:`CHILD_WARNINGS` to
    ``PYTHONWARNINGS`` for the processes it starts (idempotent)."""
    install(KNOWN_WARNINGS, CHILD_WARNINGS)
