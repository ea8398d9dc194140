"""What the parent method's ``training_step`` is served while ADIOS computes its loss: each
view's outputs from the batched forward over all masked views, and the online classifier(s)'
terms (loss with grad, detached values, accuracies, kNN features).

A part of :class:`~adios_ssl.sololearn.mixin.ADIOSMixin`: while ``_adios_serving`` is set (by
the mixin's ``_ssl_loss``), ``base_training_step`` and ``_shared_step_momentum`` answer from it
instead of running the networks again.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F
from solo.utils.metrics import accuracy_at_k

#: prefix of the momentum networks' outputs in a view's output dict
MOMENTUM_PREFIX = "momentum:"
#: key of the view's image (its ``id`` names the view to serve) in a view's output dict
IMAGE_KEY = "adios:image"


class ParentServing:
    """Answers the parent's ``base_training_step`` / ``_shared_step_momentum`` from
    ``_adios_serving`` (``{id(image): (online outputs, momentum outputs)}``) when it is set."""

    def _classifier_terms(self, out: Dict[str, Any], targets: torch.Tensor,
                          second: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """Online classifier(s) on the first view, or (``second``: the second crop's outputs)
        the mean over both crops as solo-learn's and the official ``training_step`` compute
        it: loss (with grad), detached values, stats, kNN features."""
        views = [out] if second is None else [out, second]

        def head(logits_per_view: List[torch.Tensor]) -> Dict[str, torch.Tensor]:
            losses, acc1s, acc5s = [], [], []
            for logits in logits_per_view:
                losses.append(F.cross_entropy(logits, targets, ignore_index=-1))
                acc1, acc5 = accuracy_at_k(logits, targets, top_k=(1, min(5, logits.size(1))))
                acc1s.append(acc1)
                acc5s.append(acc5)
            n = len(logits_per_view)
            return {"loss": sum(losses) / n, "acc1": sum(acc1s) / n, "acc5": sum(acc5s) / n}

        online = head([v["logits"] for v in views])
        loss = online["loss"]
        terms: Dict[str, Any] = {
            "feats": torch.cat([v["feats"].detach() for v in views]),
            "knn_targets": targets.repeat(len(views)),
            "loss": loss, "online": {**online, "loss": loss.detach()}, "detached": loss.detach()}
        momentum_classifier = getattr(self, "momentum_classifier", None)
        if momentum_classifier is not None:
            m_logits = [momentum_classifier(v[MOMENTUM_PREFIX + "feats"]) for v in views]
            momentum = head(m_logits)
            m_loss = momentum["loss"]
            terms.update({"momentum": {**momentum, "logits": m_logits[0], "loss": m_loss.detach()},
                          "loss": loss + m_loss, "detached": (loss + m_loss).detach()})
        return terms

    def _second_crop_outputs(self, x: torch.Tensor) -> Dict[str, Any]:
        """What the online classifier(s) read from the second (unmasked) crop: its backbone
        (and momentum backbone) features, in training mode as the official ``linear_forward``
        computes them, without a gradient to the backbone (the classifier reads them
        detached), and the classifier's logits."""
        if not self.no_channel_last:
            x = x.to(memory_format=torch.channels_last)
        with torch.no_grad():
            out = {"feats": self.backbone(x)}
            if getattr(self, "momentum_classifier", None) is not None:
                out[MOMENTUM_PREFIX + "feats"] = self.momentum_backbone(x)
        out["logits"] = self.classifier(out["feats"])
        return out

    def _served(self, out: Dict[str, Any], classifier: Dict[str, Any]) -> tuple:
        """What the parent's ``base_training_step`` / ``_shared_step_momentum`` return for one
        view: its own forward outputs, with the (detached) classifier numbers of
        :meth:`_classifier_terms`, the same for every view the parent averages."""
        online = {k: v for k, v in out.items()
                  if not k.startswith(MOMENTUM_PREFIX) and k != IMAGE_KEY}
        online.update(classifier["online"])
        momentum = {k[len(MOMENTUM_PREFIX):]: v for k, v in out.items()
                    if k.startswith(MOMENTUM_PREFIX)}
        momentum.update(classifier.get("momentum", {}))
        return online, momentum

    def base_training_step(self, X: torch.Tensor, targets: torch.Tensor) -> Dict[str, Any]:
        if self._adios_serving is not None:
            return self._adios_serving[id(X)][0]
        return super().base_training_step(X, targets)

    def _shared_step_momentum(self, X: torch.Tensor, targets: torch.Tensor) -> Dict[str, Any]:
        if self._adios_serving is not None:
            return self._adios_serving[id(X)][1]
        return super()._shared_step_momentum(X, targets)
