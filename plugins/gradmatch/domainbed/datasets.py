"""CdSprites-N (``gradmatch.cdsprites``) as DomainBed datasets ``CdSprites5`` and ``CdSprites15``.

Environments ``domain0 .. domain{N-1}`` keep their own shape-colour pairing; the last one,
``shuffled``, breaks it (colour uninformative): hold it out with ``--test_envs N``. Images are
3x32x32, so DomainBed's featurizer is its 32-px Wide-ResNet. Generated from the trial seed's
``hparams["cdsprites_seed"]`` (default 0); nothing is read from ``--data_dir``.
"""
from __future__ import annotations

import torch
from domainbed.datasets import MultipleDomainDataset
from torch.utils.data import TensorDataset

from ..cdsprites import colourise, generate_cdsprites

PER_DOMAIN = 1000


class _CdSprites(MultipleDomainDataset):
    NUM_DOMAINS: int
    CHECKPOINT_FREQ = 100

    def __init__(self, root, test_envs, hparams):
        super().__init__()
        n = self.NUM_DOMAINS
        # DomainBed holds out part of every environment itself: the generator's own validation
        # splits are not used (one image each, the least it makes)
        data = generate_cdsprites(n, per_domain=PER_DOMAIN, num_val=1, num_test=PER_DOMAIN,
                                  num_id_val=1, image_size=32, seed=int(hparams.get("cdsprites_seed", 0)))
        palette = data["palette"]

        def tensors(split, rows):
            colours = palette[split.palette_domain[rows], split.colour_index[rows]]
            x = torch.from_numpy(colourise(split.masks[rows], colours))
            return TensorDataset(x, torch.from_numpy(split.labels[rows]))

        train = data["train"]
        self.datasets = [tensors(train, train.palette_domain == d) for d in range(n)]
        test = data["test"]
        self.datasets.append(tensors(test, slice(None)))
        self.input_shape = (3, 32, 32)
        self.num_classes = 2


class CdSprites5(_CdSprites):
    NUM_DOMAINS = 5
    ENVIRONMENTS = [f"domain{i}" for i in range(5)] + ["shuffled"]


class CdSprites15(_CdSprites):
    NUM_DOMAINS = 15
    ENVIRONMENTS = [f"domain{i}" for i in range(15)] + ["shuffled"]


DATASETS = ("CdSprites5", "CdSprites15")
