"""ADIOS as solo-learn methods: ``simclr_adios``, ``byol_adios``, ``simsiam_adios``,
``barlow_twins_adios``, ``vicreg_adios``, and :func:`adios_method` for any other two-view method.

Importing :mod:`adios_ssl.sololearn.method` needs solo-learn master (found with
:mod:`adios_ssl.sololearn.locate`); this package itself imports nothing heavy.
"""
from .locate import SoloLearnNotFound, ensure_importable, find_checkout  # noqa: F401
