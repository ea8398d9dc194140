"""Hydra configs for solo-learn's scripts: ``--config-path pkg://adios_ssl.configs``."""
