"""The gpu-check's scales: what each part runs and its time cap, one entry per scale.

``gpu`` is planned for 10 minutes of one current data-centre GPU (an H100/H200 class card, 16
CPU cores beside it), start-up of each process included. Assumed speeds, from the CPU
measurements here scaled by public figures, not measured on a GPU (the first run says):

- DomainBed ColoredMNIST, ``MNIST_CNN``, batch 64 x 2 training environments: about 3 ms a step
  and about 1 s to evaluate all 70,000 digits, so one 5,001-step run with 51 evaluations is
  about 70 s; the 9 runs (3 test environments x ERM / Fish / FishFast; DomainBed's Fish
  rebuilds its inner network every step and is the slowest) run 9 at a time on the one GPU.
- ADIOS on PACS at 64 px, ResNet-18, the cpu scale's recipe (batch 32, so an epoch is 250
  steps): at a few hundred SimCLR steps a second (ADIOS 2-3 times slower) the model is not the
  bound; data loading is (decoding 8,000 JPEGs with 4 workers per run, 3 runs at once), about
  10 s an epoch, so 10 epochs per arm (the length of the cpu-epochs trend) plus the probes (on
  the CPU, one thread each, about a minute each) fit the science part's 4 min 40 s with
  the DomainBed runs beside them.

``rehearsal`` runs every part end to end at toy size on the CPU (what CI runs): the same steps,
the same files and report, tiny data and a few steps.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Tuple

from ..adios.arms import CpuSettings
from ..fish.domainbed.plan import CPU_ENV, DatasetPlan, Plan

PARTS = ("checks", "speed", "science")


@dataclass(frozen=True)
class CheckScale:
    """One scale of the gpu-check.

    description: one line for the report and ``--dry-run``.
    accelerator: ``gpu`` or ``cpu`` (Lightning's name; DomainBed takes CUDA when it has it).
    caps: part -> seconds; the part stops its running step there and reports what finished.
    resume: (first device, second device) pairs for the resume check.
    precisions: the mixed precisions checked and timed against ``32-true``.
    train_steps: ``gradmatch train`` steps of the precision and speed runs.
    train_kwargs: the CdSprites size of those runs (``num_domains``, ``image_size``, ``batch_size``).
    adios_check: Hydra overrides of the ADIOS mixed-precision check (one short epoch).
    speed: step -> keyword arguments of its shipped measurement (``time_cap_s`` is added).
    domainbed: the DomainBed sweep of the science part; adios: the ADIOS arms of it.
    parallel: (DomainBed runs, ADIOS jobs) run at once in the science part.
    adios_extra: Hydra overrides every ADIOS science run gets (device, precision, workers).
    threads: ``OMP_NUM_THREADS`` of each part's process.
    """

    description: str
    accelerator: str
    caps: Mapping[str, float]
    resume: Tuple[Tuple[str, str], ...]
    precisions: Tuple[str, ...]
    train_steps: int
    train_kwargs: Mapping[str, int]
    adios_check: Tuple[str, ...]
    speed: Mapping[str, dict]
    domainbed: Plan
    adios: CpuSettings
    parallel: Tuple[int, int]
    adios_extra: Tuple[str, ...] = ()
    threads: Optional[int] = None   # OMP threads of each part's process (None: the library default)

    @property
    def device(self) -> str:
        return "cuda" if self.accelerator == "gpu" else "cpu"


GPU = CheckScale(
    description=("one GPU, 10 minutes in all: checks (2 min), speed (2 min 20 s), science (4 min 40 s), "
                 "the rest for start-up and the report. "
                 "Science: DomainBed ColoredMNIST, test environments 0, 1, 2, ERM vs DomainBed's Fish "
                 "vs FishFast, 5,001 steps, default hparams, all of MNIST, scored by DomainBed's model "
                 "selection; SimCLR vs SimCLR+ADIOS vs SimCLR+random mask on PACS at 64 px, 10 epochs "
                 "each, one seed, frozen-feature probes"),
    accelerator="gpu",
    caps={"checks": 120, "speed": 140, "science": 280},   # 9 minutes: 1 left for start-up and the report
    resume=(("gpu", "cpu"), ("cpu", "gpu")),
    precisions=("16-mixed", "bf16-mixed"),
    train_steps=60,
    train_kwargs={"num_domains": 6, "image_size": 64, "batch_size": 32},
    adios_check=("max_epochs=1", "++limit_train_batches=4", "optimizer.batch_size=16",
                 "augmentations.0.crop_size=64", "data.num_workers=2"),
    speed={"adios_n4": dict(img_size=64, num_masks=4, device="cuda", batch=64, repeats=20, warmup=3),
           "adios_n6": dict(img_size=64, num_masks=6, device="cuda", batch=64, repeats=20, warmup=3),
           "fishfast": dict(model="resnet18", device="cuda", steps=10, warmup=2),
           "fish_floor": dict(model="resnet18", device="cuda", steps=30, warmup=3, image_size=96)},
    domainbed=Plan(datasets={"ColoredMNIST": DatasetPlan(test_envs=(0, 1, 2), steps=5001, checkpoint_freq=100)},
                   n_hparams=1, n_trials=1, mnist_subset=None, env={"GRADMATCH_DOMAINBED_WORKERS": "1"}),
    adios=CpuSettings(epochs=10, crop=64, batch=32, seeds=(0,), arms=("simclr", "adios", "random")),
    parallel=(9, 3),
    adios_extra=("accelerator=gpu", "devices=[0]", "precision=16-mixed", "data.num_workers=4"),
    threads=4,
)

REHEARSAL = CheckScale(
    description=("the gpu scale's parts, steps, files and report at toy size on the CPU (what CI runs): "
                 "bf16-mixed only, a few steps each, DomainBed on 1,500 digits for 6 steps (test "
                 "environment 0), ADIOS for 1 batch on 2 PACS images per domain x class"),
    accelerator="cpu",
    caps={"checks": 900, "speed": 900, "science": 900},   # generous: a loaded CI machine is slow
    resume=(("cpu", "cpu"),),
    precisions=("bf16-mixed",),
    train_steps=6,
    train_kwargs={"num_domains": 3, "image_size": 16, "batch_size": 4},
    adios_check=("max_epochs=1", "++limit_train_batches=1", "optimizer.batch_size=4",
                 "augmentations.0.crop_size=32", "data.num_workers=0"),
    speed={"adios_n4": dict(img_size=32, num_masks=4, device="cpu", batch=4, repeats=1, warmup=1,
                            piece_samples=1, mask_fbase=8),
           "adios_n6": dict(img_size=32, num_masks=6, device="cpu", batch=4, repeats=1, warmup=1,
                            piece_samples=1, mask_fbase=8),
           "fishfast": dict(model="mnist_cnn", device="cpu", batch=4, steps=1, warmup=1, piece_samples=1,
                            piece_ms=1.0),
           "fish_floor": dict(model="cnn", device="cpu", batch=4, steps=2, warmup=1, image_size=16,
                              piece_samples=1, piece_ms=1.0, deepcopy=False)},
    domainbed=Plan(datasets={"ColoredMNIST": DatasetPlan(test_envs=(0,), steps=6, checkpoint_freq=3)},
                   n_hparams=1, n_trials=1, mnist_subset=(1000, 500), env=CPU_ENV),
    adios=CpuSettings(epochs=1, crop=32, batch=8, seeds=(0,), max_per_group=2,
                      arms=("simclr", "adios", "random"), extra=("++limit_train_batches=1",)),
    parallel=(2, 2),
)

SCALES: Dict[str, CheckScale] = {"gpu": GPU, "rehearsal": REHEARSAL}


def scale_for(name: str) -> Optional[CheckScale]:
    return SCALES.get(name)
