"""Published numbers set beside the reproduced ones, each with its source.

One table for every experiment. ``verified=True`` means the number was read from the primary
source named in ``source`` (a results file of the authors' repository or the paper's text) while
writing this table; ``False`` means it was not checked against a primary source and is shown
as such. Numbers that could not be found in a primary source are not in the table.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

DOMAINBED_RESULTS = "facebookresearch/DomainBed@b93c22a domainbed/results/2020_10_06_7df6f06/results.tex"

#: metric names shared by the experiments' reports and this table
TRAINING_DOMAIN_VALIDATION = "test acc %, training-domain validation"
ORACLE_VALIDATION = "test acc %, oracle (test-domain) validation"


@dataclass(frozen=True)
class Published:
    """One published number: ``value`` (± ``std`` where given) of ``method`` on ``dataset``."""

    experiment: str   # a key of reproduction.EXPERIMENTS
    dataset: str
    method: str
    metric: str
    value: float
    std: Optional[float]
    source: str       # where exactly (file and line, or paper and table)
    verified: bool
    note: str = ""

    @property
    def key(self) -> Tuple[str, str, str]:
        return (self.dataset, self.method, self.metric)


PUBLISHED: Tuple[Published, ...] = (
    Published("domainbed", "ColoredMNIST", "ERM", TRAINING_DOMAIN_VALIDATION, 51.5, 0.1,
              DOMAINBED_RESULTS + ":200 (average over test environments)", True),
    Published("domainbed", "RotatedMNIST", "ERM", TRAINING_DOMAIN_VALIDATION, 98.0, 0.0,
              DOMAINBED_RESULTS + ":200 (average over test environments)", True),
    Published("domainbed", "ColoredMNIST", "ERM", ORACLE_VALIDATION, 57.8, 0.2,
              DOMAINBED_RESULTS + ":620 (average over test environments)", True),
    Published("domainbed", "RotatedMNIST", "ERM", ORACLE_VALIDATION, 97.8, 0.1,
              DOMAINBED_RESULTS + ":620 (average over test environments)", True),
    # Not yet here: the Fish paper's own numbers (arXiv 2104.09937 / ICLR 2022: DomainBed, WILDS,
    # CdSprites-N) and ADIOS (arXiv 2201.13100 / ICML 2022). Their tables were not readable from
    # a primary source when this table was last updated. YugeTen/fish@333efa2 and
    # YugeTen/adios@21c6f23 ship no results files (the fish README shows its results only as
    # images), and facebookresearch/DomainBed@b93c22a and p-lambda/wilds hold no Fish results.
    # Note from YugeTen/fish issue #2 (author's reply): Fish was developed on WILDS v1.0, where
    # PovertyMap's headline metric was average Pearson r rather than worst-U/R r.
)


#: experiments that report numbers of another experiment's kind (the gpu-check's science part
#: runs DomainBed's protocol on ColoredMNIST)
SHARES = {"gpu-check": "domainbed"}


def published_for(experiment: str) -> List[Published]:
    """The table's rows for one experiment, in table order."""
    experiment = SHARES.get(experiment, experiment)
    return [p for p in PUBLISHED if p.experiment == experiment]
