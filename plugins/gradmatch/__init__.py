"""gradmatch: Fish (Shi et al., "Gradient Matching for Domain Generalization", ICLR 2022).

Framework-free core: :class:`Fish` (Algorithm 1), :class:`IDGM` (the exact second-order
objective), :class:`ERM`, and the GIP diagnostic. Adapters: ``gradmatch.wilds`` (WILDS runner,
CdSprites-N) and the ``gradmatch`` command line.
"""
from .erm import ERM
from .fish import Fish
from .gip import gradient_inner_product
from .idgm import IDGM, idgm_objective
from .losses import NonFiniteLossError, binary_cross_entropy_loss, cross_entropy_loss, mse_loss

__all__ = [
    "ERM", "Fish", "IDGM", "NonFiniteLossError", "binary_cross_entropy_loss",
    "cross_entropy_loss", "gradient_inner_product", "idgm_objective", "mse_loss",
]
__version__ = "0.1.0"
