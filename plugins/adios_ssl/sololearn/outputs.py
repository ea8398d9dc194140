"""What an ADIOS run writes besides solo-learn's checkpoints: the mask pictures callback
(:mod:`adios_ssl.sololearn.pictures`) and ``provenance.json`` (:mod:`adios_ssl.sololearn.record`).

A part of :class:`~adios_ssl.sololearn.mixin.ADIOSMixin` (reads ``masker`` and
``mask_pictures``).
"""
from __future__ import annotations


class RunOutputs:
    """Adds the mask pictures callback and writes the run record when training starts."""

    def configure_callbacks(self):
        callbacks = list(super().configure_callbacks() or [])
        if self.masker is not None and self.mask_pictures.get("enabled", True):
            from .pictures import MaskPictures

            callbacks.append(MaskPictures(
                every_n_epochs=int(self.mask_pictures.get("every_n_epochs", 1)),
                num_images=int(self.mask_pictures.get("num_images", 8))))
        return callbacks

    def on_train_start(self) -> None:
        """Process 0 writes ``provenance.json`` (the resolved config and the code that runs it,
        :mod:`adios_ssl.sololearn.record`) next to the ``args.json`` that solo-learn's
        ``Checkpointer`` has just written (callbacks' ``on_train_start`` runs before the
        module's)."""
        super_hook = getattr(super(), "on_train_start", None)
        if super_hook is not None:
            super_hook()
        if self.trainer.is_global_zero:
            from .record import write_run_record

            write_run_record(self, self.trainer)
