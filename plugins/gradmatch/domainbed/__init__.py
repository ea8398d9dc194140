"""Fish as a DomainBed plugin: algorithms ``FishFast`` and ``IDGM`` registered into an
unmodified DomainBed checkout (found through ``$DOMAINBED_DIR`` or
``~/.cache/gradmatch-adios/upstream/DomainBed`` or the older ``~/.cache/gradmatch/upstream/DomainBed``).

Entry points that register, then run DomainBed's own scripts::

    python -m gradmatch.domainbed.train --algorithm FishFast --dataset ColoredMNIST ...
    python -m gradmatch.domainbed.sweep launch --algorithms FishFast Fish ERM ...

Nothing here imports torch or DomainBed at package import time.
"""
from .locate import DomainBedNotFound, ensure_importable, find_checkout  # noqa: F401
