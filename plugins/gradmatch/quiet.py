"""The known third-party warnings filtered in gradmatch's entry points (``gradmatch``,
``python -m gradmatch.domainbed.train`` and ``.sweep``, ``python -m reproduction.fish.domainbed.job``):
those of :mod:`runkit.quiet` (torchmetrics' and ``outdated``'s ``pkg_resources`` notice, timm's
import-path FutureWarnings, loky's leaked semaphores)."""
from __future__ import annotations

from typing import MutableMapping, Optional

from runkit.quiet import COMMON_CHILD_WARNINGS, COMMON_WARNINGS, install

KNOWN_WARNINGS = COMMON_WARNINGS
CHILD_WARNINGS = COMMON_CHILD_WARNINGS


def quiet_third_party(environ: Optional[MutableMapping[str, str]] = None) -> None:
    """Install :data:`KNOWN_WARNINGS` here and :data:`CHILD_WARNINGS` in ``environ``'s
    ``PYTHONWARNINGS`` (default ``os.environ``) for child processes. Idempotent."""
    install(KNOWN_WARNINGS, CHILD_WARNINGS, environ)
