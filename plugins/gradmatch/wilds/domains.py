"""Fish's training domains from WILDS metadata, by field name (``Preset.groupby_fields``)."""
from __future__ import annotations

from typing import List, Sequence

import torch


def fish_domains(preset, metadata_array: torch.Tensor,
                 metadata_fields: Sequence[str]) -> List[torch.Tensor]:
    """Row indices (into ``metadata_array``, shape ``(N, F)``) of every non-empty Fish domain.

    ``metadata_fields`` names the ``F`` columns (``dataset.metadata_fields``); columns are looked
    up by name, never by position. Order is deterministic: sorted value tuples for
    ``"combinatorial"``; (none, identity 1, ..., identity k) each split into ascending y for
    ``"identity_x_y"``.
    """
    missing = [f for f in preset.groupby_fields if f not in metadata_fields]
    if missing:
        raise ValueError(
            f"{preset.dataset}: metadata has no field(s) {missing}; it has {list(metadata_fields)}")
    cols = [list(metadata_fields).index(f) for f in preset.groupby_fields]
    if preset.domain_scheme == "combinatorial":
        _, inverse, counts = torch.unique(metadata_array[:, cols], dim=0, return_inverse=True,
                                          return_counts=True)
        return list(torch.argsort(inverse, stable=True).split(counts.tolist()))
    if preset.domain_scheme == "identity_x_y":
        identities, y = metadata_array[:, cols[:-1]] == 1, metadata_array[:, cols[-1]]
        groups = [~identities.any(dim=1)] + list(identities.unbind(dim=1))
        masks = [g & (y == label) for g in groups for label in torch.unique(y)]
        return [m.nonzero().squeeze(1) for m in masks if m.any()]
    raise ValueError(f"unknown domain_scheme {preset.domain_scheme!r}")
