"""gradmatch: Fish (Shi et al., "Gradient Matching for Domain Generalization", ICLR 2022).

Framework-free core: :class:`Fish` (Algorithm 1), :class:`IDGM` (the exact second-order
objective), :class:`ERM`, and the GIP diagnostic. Adapters: ``gradmatch.wilds`` (WILDS runner,
CdSprites-N) and the ``gradmatch`` command line.
"""
import importlib

#: public name -> the module defining it, imported on first use (``import gradmatch.cli`` and
#: ``gradmatch --help`` stay free of torch)
_EXPORTS = {"ERM": "erm", "Fish": "fish", "gradient_inner_product": "gip", "IDGM": "idgm",
            "idgm_objective": "idgm", "NonFiniteLossError": "losses",
            "binary_cross_entropy_loss": "losses", "cross_entropy_loss": "losses", "mse_loss": "losses"}


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ERM", "Fish", "IDGM", "NonFiniteLossError", "binary_cross_entropy_loss",
    "cross_entropy_loss", "gradient_inner_product", "idgm_objective", "mse_loss",
]
__version__ = "0.1.0"
