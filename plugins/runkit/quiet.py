"""Filters for known third-party warnings that say nothing about a run, installed by the entry
points of both packages (never at import of a library module).

Each filter names the warning's text, its category and the module it is attributed to, so the
same text from anywhere else still shows. Child processes (Lightning's DDP ranks, DomainBed's
sweep jobs, ``gradmatch reproduce`` jobs, loky's resource tracker) get the filters
``PYTHONWARNINGS`` can express (a literal message prefix, an exact module name), added to the
environment they inherit.
"""
from __future__ import annotations

import os
import warnings
from typing import Iterable, MutableMapping, Optional, Sequence, Tuple

Filter = Tuple[str, type, str]  # (message regex, category, module regex)

#: the warnings both packages' entry points meet:
#: - ``pkg_resources is deprecated as an API`` (setuptools >= 81), raised when torchmetrics
#:   (Lightning, solo-learn, the WILDS runner) or ``outdated`` (WILDS' version check, imported by
#:   DomainBed's datasets) import ``pkg_resources``;
#: - timm's ``Importing from timm.<module> is deprecated`` FutureWarnings (code written for older
#:   timm imports the old paths);
#: - loky's ``resource_tracker: There appear to be N leaked semaphore objects`` at exit (joblib's
#:   process pool), raised in loky's resource tracker process.
COMMON_WARNINGS: Tuple[Filter, ...] = (
    (r"pkg_resources is deprecated as an API", UserWarning, r"(torchmetrics|outdated)(\.|$)"),
    (r"Importing from timm\.[\w.]+ is deprecated", FutureWarning, r"timm(\.|$)"),
    (r"resource_tracker: There appear to be \d+ leaked semaphore objects", UserWarning,
     r"joblib\.externals\.loky\.backend\.resource_tracker$"),
)
#: the same for child processes, in ``PYTHONWARNINGS`` syntax (action:message:category:module)
COMMON_CHILD_WARNINGS: Tuple[str, ...] = (
    "ignore:pkg_resources is deprecated as an API:UserWarning:torchmetrics.utilities.imports",
    "ignore:pkg_resources is deprecated as an API:UserWarning:outdated",
    "ignore:Importing from timm.:FutureWarning",
    # the message starts "resource_tracker: ..." (a colon, which PYTHONWARNINGS cannot hold):
    # every UserWarning of loky's resource tracker process
    "ignore::UserWarning:joblib.externals.loky.backend.resource_tracker",
)


def install(filters: Iterable[Filter], child_filters: Sequence[str],
            environ: Optional[MutableMapping[str, str]] = None) -> None:
    """Install ``filters`` in this process and add ``child_filters`` to ``PYTHONWARNINGS`` of
    ``environ`` (default ``os.environ``) for the processes it starts. Idempotent."""
    for message, category, module in filters:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    environ = os.environ if environ is None else environ
    present = [w for w in environ.get("PYTHONWARNINGS", "").split(",") if w]
    missing = [w for w in child_filters if w not in present]
    if missing:
        environ["PYTHONWARNINGS"] = ",".join(present + missing)
