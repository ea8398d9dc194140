"""The frozen-feature probes of a solo-learn checkpoint and its mask pictures, in parts.

:mod:`.images` lists a split and caches its decoded images, :mod:`.backbone` rebuilds a
checkpoint's backbone, :mod:`.classifiers` holds the two probes on given features,
:mod:`.evaluate` runs backbone, features and probes for one checkpoint, and :mod:`.masks` draws
a run's masks on test images. The command line is :mod:`adios_ssl.probe`.
"""
