"""ADIOS (Shi et al., "Adversarial Masking for Self-Supervised Learning", ICML 2022) for solo-learn.

Placeholder package: the masking network and the solo-learn plugin arrive with their own issue.
"""
