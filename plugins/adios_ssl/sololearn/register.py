"""Add the ADIOS methods to ``solo.methods.METHODS`` without editing solo-learn.

solo-learn's ``main_pretrain.py`` looks methods up in that dict. The shipped configs declare
:class:`RegisterADIOSMethods` as a Hydra callback, so the unmodified script finds them:

    python main_pretrain.py --config-path pkg://adios_ssl.configs --config-name <name>

The callback also checks an ADIOS method's settings before the job starts (before solo-learn
parses the config, builds the model or writes anything), see :func:`check_job_config`.
"""
from __future__ import annotations

import sys
from pathlib import Path
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


def check_job_config(config: Any) -> None:
    """Check the ADIOS settings of the job's config (Hydra's composed config, ``hydra`` node
    included) when ``config.method`` is an ADIOS method; raises
    :class:`~adios_ssl.sololearn.config.ADIOSConfigError`. Other methods are not checked."""
    from omegaconf import OmegaConf
    from solo.methods import METHODS

    check = getattr(METHODS.get(OmegaConf.select(config, "method", default=None)),
                    "adios_check", None)
    if check is not None:
        check(config)


class RegisterADIOSMethods(_HydraCallback):
    """Hydra callback: registers the ADIOS methods before the job (single run or multirun), and
    refuses a job whose ADIOS settings are bad before it starts.

    Hydra turns an exception raised in a callback into a warning and runs the job anyway, so a
    bad setting is reported as one line ``<script>: error: <what is wrong and the fix>`` on
    stderr and, for a single run, ends the process (exit status 1, nothing written). In a
    multirun the other jobs go on: the bad job fails when solo-learn builds its method."""

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        register()

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        register()

    def on_job_start(self, config: Any, **kwargs: Any) -> None:
        register()
        from .config import ADIOSConfigError

        try:
            check_job_config(config)
        except ADIOSConfigError as err:
            message = f"{Path(sys.argv[0]).name}: error: {' '.join(str(err).split())}"
            if _mode(config) == "MULTIRUN":
                print(message, file=sys.stderr)
                return
            raise SystemExit(message) from None


def _mode(config: Any) -> str:
    from omegaconf import OmegaConf

    mode = OmegaConf.select(config, "hydra.mode", default=None, throw_on_resolution_failure=False)
    return getattr(mode, "name", str(mode))
