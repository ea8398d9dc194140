"""The two papers' official code, located like the other upstream checkouts: used by the tests
as an oracle (``tests/test_official_oracle.py`` runs it side by side with this project's code).

- ``OFFICIAL_FISH``: YugeTen/fish (Shi et al., ICLR 2022), ``src/main.py`` + ``src/utils.py``;
- ``OFFICIAL_ADIOS``: YugeTen/adios (Shi et al., ICML 2022), ``src/methods/*_adios.py``.

A checkout is looked for in ``$FISH_OFFICIAL_DIR`` / ``$ADIOS_OFFICIAL_DIR``, else in
``~/.cache/gradmatch-adios/upstream/fish`` / ``.../adios`` (see :class:`UpstreamRepo`). Neither
project is a package that can be put on ``sys.path`` as it is: the Fish code is a folder of
top-level scripts (``main``, ``utils``, ``config``, ``models``) that does its work at import
time, and both name their code folder ``src``. So only :meth:`UpstreamRepo.find_checkout` and
:meth:`UpstreamRepo.clone` are meant for them; the test shims import their files in place.
"""
from __future__ import annotations

from upstream_checkouts import UpstreamRepo

FISH_ENV_VAR = "FISH_OFFICIAL_DIR"
ADIOS_ENV_VAR = "ADIOS_OFFICIAL_DIR"


class OfficialFishNotFound(ImportError):
    """No YugeTen/fish checkout where the tests look for one."""


class OfficialADIOSNotFound(ImportError):
    """No YugeTen/adios checkout where the tests look for one."""


def _clone_command(variable: str) -> str:
    return f'python -c "from upstream_checkouts.official import {variable}; {variable}.clone()"'


OFFICIAL_FISH = UpstreamRepo(
    name="fish", env_var=FISH_ENV_VAR, repo_url="https://github.com/YugeTen/fish",
    commit="333efa24572d99da0a4107ab9cc4af93a915d2a9",
    marker="src/main.py", package="src", not_found=OfficialFishNotFound,
    install_hint=("The official Fish code is only run by the tests (tests/test_official_oracle.py), "
                  "with this project's environment; nothing else needs installing."),
    clone_command=_clone_command("OFFICIAL_FISH"))

OFFICIAL_ADIOS = UpstreamRepo(
    name="adios", env_var=ADIOS_ENV_VAR, repo_url="https://github.com/YugeTen/adios",
    commit="21c6f23f74656046f93105989874c7bac62cefa6",
    marker="src/methods/simclr_adios.py", package="src", not_found=OfficialADIOSNotFound,
    install_hint=("The official ADIOS code is only run by the tests (tests/test_official_oracle.py), "
                  "with this project's `solo` extra (pytorch_lightning, torchmetrics, timm, "
                  "scikit-learn); pl_bolts is not needed."),
    clone_command=_clone_command("OFFICIAL_ADIOS"))

#: name -> repository, for tests and tools that iterate over them
OFFICIAL_CODE = {"fish": OFFICIAL_FISH, "adios": OFFICIAL_ADIOS}
