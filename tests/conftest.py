"""Test-wide settings."""
import torch

import gradmatch.wilds  # noqa: F401  (stops wilds' PyPI version check before any test imports wilds)

# One thread: stable timings and no oversubscription on the 2-core CI machine.
torch.set_num_threads(1)
