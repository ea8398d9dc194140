"""Test-wide settings."""
import sys

import torch

# `import wilds` starts a thread that asks PyPI for a newer version (no timeout); the package
# skips it when `outdated` cannot be imported.
sys.modules.setdefault("outdated", None)
# One thread: stable timings and no oversubscription on the 2-core CI machine.
torch.set_num_threads(1)
