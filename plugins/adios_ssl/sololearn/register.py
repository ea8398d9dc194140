"""Add the ADIOS methods to ``solo.methods.METHODS`` without editing solo-learn.

solo-learn's ``main_pretrain.py`` looks methods up in that dict. The shipped configs declare
:class:`RegisterADIOSMethods` as a Hydra callback, so the unmodified script finds them:

    python main_pretrain.py --config-path pkg://adios_ssl.configs --config-name <name>
"""
from __future__ import annotations

from typing import Any, Dict

try:  # hydra-core 1.3: the callback API lives under hydra.experimental
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover - hydra not installed: registration still works
    _HydraCallback = object


def register() -> Dict[str, type]:
    """Make solo-learn master importable (:func:`~adios_ssl.sololearn.locate.ensure_importable`),
    then insert every ADIOS method into ``solo.methods.METHODS`` (idempotent); returns them."""
    from .locate import ensure_importable

    ensure_importable()
    from solo.methods import METHODS

    from .method import ADIOS_METHODS

    for name, cls in ADIOS_METHODS.items():
        METHODS.setdefault(name, cls)
    return ADIOS_METHODS


class RegisterADIOSMethods(_HydraCallback):
    """Hydra callback: registers the ADIOS methods before the job (single run or multirun)."""

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        register()

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        register()

    def on_job_start(self, config: Any, **kwargs: Any) -> None:
        register()
