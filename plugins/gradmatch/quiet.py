"""Known third-party warnings that say nothing about a gradmatch run, filtered in gradmatch's
entry points (``gradmatch`` / ``gradmatch.cli``, ``python -m gradmatch.domainbed.train`` and
``.sweep``, ``python -m gradmatch.reproduce.domainbed``), never at import of a library module.

Each filter names the warning's text, its category and the module it is attributed to, so the
same text from anywhere else still shows:

- ``pkg_resources is deprecated as an API`` (setuptools >= 81), raised when torchmetrics
  (Lightning, the WILDS runner) or ``outdated`` (WILDS' version check, imported by DomainBed's
  datasets) import ``pkg_resources``;
- timm's ``Importing from timm.<module> is deprecated`` FutureWarnings (code written for older
  timm imports the old paths);
- loky's ``resource_tracker: There appear to be N leaked semaphore objects`` at exit (joblib's
  process pool), raised in loky's resource tracker process.

Child processes (the jobs of ``gradmatch reproduce``, DomainBed's sweep, loky's resource
tracker) get the filters ``PYTHONWARNINGS`` can express (a literal message prefix, an exact
module name), added to the environment they inherit.
"""
from __future__ import annotations

import os
import warnings
from typing import MutableMapping, Optional

#: (message regex, category, module regex) of the in-process filters
KNOWN_WARNINGS = (
    (r"pkg_resources is deprecated as an API", UserWarning, r"(torchmetrics|outdated)(\.|$)"),
    (r"Importing from timm\.[\w.]+ is deprecated", FutureWarning, r"timm(\.|$)"),
    (r"resource_tracker: There appear to be \d+ leaked semaphore objects", UserWarning,
     r"joblib\.externals\.loky\.backend\.resource_tracker$"),
)
#: the same for child processes, in ``PYTHONWARNINGS`` syntax (action:message:category:module)
CHILD_WARNINGS = (
    "ignore:pkg_resources is deprecated as an API:UserWarning:torchmetrics.utilities.imports",
    "ignore:pkg_resources is deprecated as an API:UserWarning:outdated",
    "ignore:Importing from timm.:FutureWarning",
    # the message starts "resource_tracker: ..." (a colon, which PYTHONWARNINGS cannot hold):
    # every UserWarning of loky's resource tracker process
    "ignore::UserWarning:joblib.externals.loky.backend.resource_tracker",
)


def quiet_third_party(environ: Optional[MutableMapping[str, str]] = None) -> None:
    """Install :data:`KNOWN_WARNINGS` in this process and add :data:`CHILD_WARNINGS` to
    ``PYTHONWARNINGS`` of ``environ`` (default ``os.environ``) for the processes it starts.
    Idempotent."""
    for message, category, module in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    environ = os.environ if environ is None else environ
    present = [w for w in environ.get("PYTHONWARNINGS", "").split(",") if w]
    missing = [w for w in CHILD_WARNINGS if w not in present]
    if missing:
        environ["PYTHONWARNINGS"] = ",".join(present + missing)
