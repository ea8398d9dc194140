"""Known third-party warnings that say nothing about an ADIOS run, filtered in this package's
entry points (the ``adios-ssl`` command, ``python -m adios_ssl.<script>``, the probe), never at
import of a library module.

Each filter names the warning's text, category and the module it is raised in:

- torchmetrics' ``pkg_resources is deprecated as an API`` (setuptools >= 81 deprecation,
  raised when torchmetrics is imported);
- timm's ``Importing from timm.<module> is deprecated`` FutureWarnings (solo-learn imports the
  old paths);
- timm's registry ``Overwriting <model> in registry with solo.backbones...`` (solo-learn
  registers its own ConvNeXt/PoolFormer) and torch's ``torch.cuda.amp.custom_fwd(args...)``
  FutureWarning in ``solo.utils.whitening``, both raised while solo-learn is imported;
- loky's ``resource_tracker: There appear to be N leaked semaphore objects`` at exit (joblib's
  process pool, used by scikit-learn in the probes).

Child processes (Lightning's DDP ranks rerun the script; loky's resource tracker) get the
filters they can express through ``PYTHONWARNINGS`` (a literal message prefix, an exact module).
"""
from __future__ import annotations

import os
import warnings

#: (message regex, category, module regex) of the in-process filters
KNOWN_WARNINGS = (
    (r"pkg_resources is deprecated as an API", UserWarning, r"torchmetrics(\.|$)"),
    (r"Importing from timm\.[\w.]+ is deprecated", FutureWarning, r"timm(\.|$)"),
    (r"Overwriting \w+ in registry with solo\.backbones\.", UserWarning, r"solo\.backbones(\.|$)"),
    (r"`torch\.cuda\.amp\.custom_fwd\(args\.\.\.\)` is deprecated", FutureWarning,
     r"solo\.utils\.whitening$"),
    (r"resource_tracker: There appear to be \d+ leaked semaphore objects", UserWarning,
     r"joblib\.externals\.loky\.backend\.resource_tracker$"),
)
#: the same for child processes, in ``PYTHONWARNINGS`` syntax (action:message:category:module)
CHILD_WARNINGS = (
    "ignore:pkg_resources is deprecated as an API:UserWarning:torchmetrics.utilities.imports",
    "ignore:Importing from timm.:FutureWarning",
    # the message starts "resource_tracker: ..." (a colon, which PYTHONWARNINGS cannot hold):
    # every UserWarning of loky's resource tracker process
    "ignore::UserWarning:joblib.externals.loky.backend.resource_tracker",
)


def quiet_known_warnings() -> None:
    """Install the filters in this process and add :data:`CHILD_WARNINGS` to
    ``PYTHONWARNINGS`` for the processes it starts (idempotent)."""
    for message, category, module in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    present = [w for w in os.environ.get("PYTHONWARNINGS", "").split(",") if w]
    missing = [w for w in CHILD_WARNINGS if w not in present]
    if missing:
        os.environ["PYTHONWARNINGS"] = ",".join(present + missing)
