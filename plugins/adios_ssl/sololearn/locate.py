"""Find a solo-learn checkout (PyPI's ``solo-learn`` is the 2021 API: users clone master)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from upstream_checkouts import UpstreamRepo

ENV_VAR = "SOLO_LEARN_DIR"
REPO_URL = "https://github.com/vturrisi/solo-learn"
PINNED_COMMIT = "9187ea39c2c3f43c455ab06664d2b019a9802954"


class SoloLearnNotFound(ImportError):
    """No usable solo-learn checkout where the plugin looks for one."""


SOLO_LEARN = UpstreamRepo(
    name="solo-learn", env_var=ENV_VAR, repo_url=REPO_URL, commit=PINNED_COMMIT,
    marker="solo/methods/base.py", package="solo", not_found=SoloLearnNotFound,
    install_hint=("solo-learn also needs its dependencies: `pip install -e '.[solo]'` in this "
                  "project (lightning<2.7, torchmetrics<0.12, hydra-core, ...)."),
    clone_command="adios-ssl solo clone")


def find_checkout() -> Path:
    """The checkout root: ``$SOLO_LEARN_DIR`` if set, else ``~/.cache/gradmatch-adios/upstream/solo-learn``
    (or the older ``~/.cache/gradmatch/upstream/solo-learn``)."""
    return SOLO_LEARN.find_checkout()


def ensure_importable() -> Path:
    """Make ``import solo`` give solo-learn master (the checkout goes on ``sys.path`` unless a
    master ``solo`` is installed already, e.g. with ``pip install -e <checkout>``); returns the
    checkout root."""
    root = SOLO_LEARN.ensure_importable()
    spec = importlib.util.find_spec("solo.args.pretrain")
    if spec is None:
        raise SoloLearnNotFound(
            f"the importable `solo` at {root} is not solo-learn master (no solo/args/pretrain.py): "
            "PyPI's `solo-learn` package is the 2021 API. `pip uninstall solo-learn`, then "
            f"clone master (`{SOLO_LEARN.clone_command}`) or set ${ENV_VAR}.")
    return root


def script(name: str) -> Path:
    """Path of one of solo-learn's top-level scripts (``main_pretrain.py``, ...), which
    ``pip install`` does not install: they are read from the checkout."""
    path = find_checkout() / name
    if not path.is_file():
        raise SoloLearnNotFound(f"{path} does not exist: is {find_checkout()} a full solo-learn "
                                "checkout (not just the `solo` package)?")
    return path
