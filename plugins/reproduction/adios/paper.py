"""The paper scale: the paper's runs (shipped configs and the official ViT-Tiny scripts as
overrides), each pretrained then evaluated by solo-learn's ``main_linear.py``, and their report."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Tuple

from ..jobs import Job, Report
from .arms import CONFIGS, LINEAR_METRIC, NAME, fmt, read_json, solo_command

IMAGENET100 = ("data.train_path=$IMAGENET100_DIR/train", "data.val_path=$IMAGENET100_DIR/val")
STL10 = ("data.train_path=$STL10_DIR", "data.val_path=$STL10_DIR")


@dataclass(frozen=True)
class PaperRun:
    name: str
    config: str
    dataset: str          # for the report / compare keys
    linear_dataset: str   # solo-learn's data.dataset for main_linear.py
    method: str           # compare key method
    backbone: str
    data: Tuple[str, ...]
    overrides: Tuple[str, ...] = ()
    source: str = ""


def _vit(img_size: int = 96, dynamic: bool = False) -> Tuple[str, ...]:
    out = ("backbone.name=vit_tiny", f"++backbone.kwargs.img_size={img_size}")
    return out + (("++backbone.kwargs.dynamic_img_size=true",) if dynamic else ())


_OFFICIAL = "YugeTen/adios bash_files/training/"

#: the official runs. ViT-Tiny: the official script's values where they differ from the
#: ResNet-18 config of the same dataset and method (learning rates x 256/batch, because
#: solo-learn scales them by batch/256 and the official code did not; official SimSiam masks
#: both views: use_symmetry_mask -> symmetric_pairs, use_no_mask -> pairs "none",
#: use_both_mask -> pairs "both"; num_blocks -> unet_blocks). ImageNet100-S ViTs get
#: dynamic_img_size because solo-learn's main_linear.py evaluates ImageNet-100 at 224 px.
PAPER_RUNS: Tuple[PaperRun, ...] = (
    PaperRun("imagenet100s_simclr_adios", "imagenet100s_simclr_adios", "ImageNet100-S", "imagenet100",
             "SimCLR+ADIOS", "resnet18", IMAGENET100, source=_OFFICIAL + "imagenet100s/resnet18/simclr_adios.sh"),
    PaperRun("imagenet100s_byol_adios", "imagenet100s_byol_adios", "ImageNet100-S", "imagenet100",
             "BYOL+ADIOS", "resnet18", IMAGENET100, source=_OFFICIAL + "imagenet100s/resnet18/byol_adios.sh"),
    PaperRun("imagenet100s_simsiam_adios", "imagenet100s_simsiam_adios", "ImageNet100-S", "imagenet100",
             "SimSiam+ADIOS", "resnet18", IMAGENET100, source=_OFFICIAL + "imagenet100s/resnet18/simsiam_adios.sh"),
    PaperRun("stl10_simclr_adios", "stl10_simclr_adios", "STL10", "stl10", "SimCLR+ADIOS", "resnet18",
             STL10, source=_OFFICIAL + "stl10/resnet18/simclr_adios.sh"),
    PaperRun("stl10_byol_adios", "stl10_byol_adios", "STL10", "stl10", "BYOL+ADIOS", "resnet18",
             STL10, source=_OFFICIAL + "stl10/resnet18/byol_adios.sh"),
    PaperRun("stl10_simsiam_adios", "stl10_simsiam_adios", "STL10", "stl10", "SimSiam+ADIOS", "resnet18",
             STL10, source=_OFFICIAL + "stl10/resnet18/simsiam_adios.sh"),
    PaperRun("imagenet100_simclr_adios_s", "imagenet100_simclr_adios_s", "ImageNet100", "imagenet100",
             "SimCLR+ADIOS-s", "resnet18", IMAGENET100, source=_OFFICIAL + "imagenet100/resnet18/simclr_adios_s.sh"),
    PaperRun("imagenet100_byol_adios_s", "imagenet100_byol_adios_s", "ImageNet100", "imagenet100",
             "BYOL+ADIOS-s", "resnet18", IMAGENET100, source=_OFFICIAL + "imagenet100/resnet18/byol_adios_s.sh"),
    PaperRun("imagenet100_simsiam_adios_s", "imagenet100_simsiam_adios_s", "ImageNet100", "imagenet100",
             "SimSiam+ADIOS-s", "resnet18", IMAGENET100, source=_OFFICIAL + "imagenet100/resnet18/simsiam_adios_s.sh"),
    # ViT-Tiny, ImageNet100-S (batch 128: official lrs x 2)
    PaperRun("imagenet100s_simclr_adios_vittiny", "imagenet100s_simclr_adios", "ImageNet100-S",
             "imagenet100", "SimCLR+ADIOS (ViT-Tiny)", "vit_tiny", IMAGENET100,
             _vit(96, True) + ("method_kwargs.alpha_entropy=0.0",
                               "method_kwargs.alpha_sparsity=0.8890717462273039",
                               "optimizer.lr=0.23144085943616454",
                               "method_kwargs.mask_lr=0.06680251147879538", "max_epochs=300",
                               "method_kwargs.N=6", "method_kwargs.mask_fbase=16",
                               "method_kwargs.unet_norm=gn", "name=imagenet100s_simclr_adios_vittiny"),
             _OFFICIAL + "imagenet100s/vittiny/simclr_adios.sh"),
    PaperRun("imagenet100s_byol_adios_vittiny", "imagenet100s_byol_adios", "ImageNet100-S",
             "imagenet100", "BYOL+ADIOS (ViT-Tiny)", "vit_tiny", IMAGENET100,
             _vit(96, True) + ("method_kwargs.alpha_sparsity=0.9517975576926448",
                               "optimizer.lr=0.4282225581807691",
                               "method_kwargs.mask_lr=0.6527237683787123", "max_epochs=300",
                               "method_kwargs.mask_fbase=8", "name=imagenet100s_byol_adios_vittiny"),
             _OFFICIAL + "imagenet100s/vittiny/byol_adios.sh"),
    PaperRun("imagenet100s_simsiam_adios_vittiny", "imagenet100s_simsiam_adios", "ImageNet100-S",
             "imagenet100", "SimSiam+ADIOS (ViT-Tiny)", "vit_tiny", IMAGENET100,
             _vit(96, True) + ("method_kwargs.alpha_entropy=0.0",
                               "method_kwargs.alpha_sparsity=0.7217629549008437",
                               "optimizer.lr=0.9937537361871212",
                               "method_kwargs.mask_lr=0.1331205473338852", "max_epochs=300",
                               "method_kwargs.pairs=[masked,both]",
                               "name=imagenet100s_simsiam_adios_vittiny"),
             _OFFICIAL + "imagenet100s/vittiny/simsiam_adios.sh"),
    # ViT-Tiny, STL-10
    PaperRun("stl10_simclr_adios_vittiny", "stl10_simclr_adios", "STL10", "stl10",
             "SimCLR+ADIOS (ViT-Tiny)", "vit_tiny", STL10,
             _vit(96) + ("method_kwargs.alpha_sparsity=0.39131043617986705",
                         "optimizer.batch_size=128", "optimizer.lr=0.205046959722204",
                         "optimizer.classifier_lr=0.2", "method_kwargs.mask_lr=0.1882127136224662",
                         "optimizer.weight_decay=0.0001", "max_epochs=200", "method_kwargs.N=4",
                         "method_kwargs.mask_fbase=32", "method_kwargs.proj_output_dim=128",
                         "name=stl10_simclr_adios_vittiny"),
             _OFFICIAL + "stl10/vittiny/simclr_adios.sh"),
    PaperRun("stl10_byol_adios_vittiny", "stl10_byol_adios", "STL10", "stl10",
             "BYOL+ADIOS (ViT-Tiny)", "vit_tiny", STL10,
             _vit(96) + ("method_kwargs.alpha_sparsity=0.8269158678071891",
                         "optimizer.batch_size=64", "optimizer.lr=1.7758868423863299",
                         "optimizer.classifier_lr=0.4", "method_kwargs.mask_lr=0.8185599963650351",
                         "optimizer.weight_decay=1e-05", "max_epochs=200",
                         "method_kwargs.mask_fbase=32", "name=stl10_byol_adios_vittiny"),
             _OFFICIAL + "stl10/vittiny/byol_adios.sh"),
    PaperRun("stl10_simsiam_adios_vittiny", "stl10_simsiam_adios", "STL10", "stl10",
             "SimSiam+ADIOS (ViT-Tiny)", "vit_tiny", STL10,
             _vit(96) + ("method_kwargs.alpha_sparsity=0.8581936366173779",
                         "optimizer.lr=0.5835524675418786", "method_kwargs.mask_lr=0.1863364948985896",
                         "method_kwargs.pairs=[masked]", "method_kwargs.symmetric_pairs=true",
                         "optimizer.weight_decay=1e-05", "max_epochs=200",
                         "augmentations.0.color_jitter.brightness=0.4",
                         "augmentations.0.color_jitter.contrast=0.4",
                         "augmentations.0.color_jitter.saturation=0.4",
                         "augmentations.0.color_jitter.hue=0.1",
                         "method_kwargs.mask_fbase=16", "method_kwargs.proj_output_dim=2048",
                         "method_kwargs.unet_blocks=4", "name=stl10_simsiam_adios_vittiny"),
             _OFFICIAL + "stl10/vittiny/simsiam_adios.sh"),
)

#: main_linear.py as the official bash_files/evaluation/linear.sh: SGD lr 0.1 at batch 128
#: (0.2 in solo-learn's per-256 scaling), no weight decay, steps at 60 and 80, 100 epochs
PAPER_LINEAR = ("accelerator=gpu", "devices=[0]", "strategy=ddp", "sync_batchnorm=true",
                "precision=16-mixed", "optimizer.batch_size=128", "optimizer.lr=0.2",
                "optimizer.weight_decay=0", "scheduler.lr_decay_steps=[60,80]", "max_epochs=100",
                "data.num_workers=8")


def paper_jobs(out: Path) -> List[Job]:
    out = Path(out).resolve()
    jobs = []
    for run in PAPER_RUNS:
        folder = f"paper/{run.name}"
        pre = ("--config-path", CONFIGS, "--config-name", run.config) + run.data + run.overrides
        jobs.append(Job(f"pretrain/{run.name}", solo_command("pretrain", "../pretrain.json", pre, "../final.ckpt"),
                        done=f"{folder}/pretrain.json", cwd=f"{folder}/pretrain"))
        backbone = tuple(o for o in run.overrides if o.startswith(("backbone.", "++backbone.")))
        lin = ("--config-path", CONFIGS, "--config-name", "cpu_linear") + PAPER_LINEAR + (
            f"data.dataset={run.linear_dataset}",) + run.data + (
            f"backbone.name={run.backbone}", f"pretrain_method={_method_of(run.config)}",
            f"pretrained_feature_extractor={out / folder / 'final.ckpt'}",
            f"name=linear-{run.name}") + tuple(b for b in backbone if not b.startswith("backbone.name"))
        jobs.append(Job(f"linear/{run.name}", solo_command("linear", "../linear.json", lin),
                        done=f"{folder}/linear.json", cwd=f"{folder}/linear",
                        after=(f"pretrain/{run.name}",)))
    return jobs


def _method_of(config: str) -> str:
    """``imagenet100_simclr_adios_s`` -> ``simclr_adios`` (the method the config trains)."""
    method = config.split("_", 1)[1]
    return method[:-2] if method.endswith("_adios_s") else method


def paper_report(out: Path) -> Report:
    rows, compare = [], {}
    for run in PAPER_RUNS:
        lin = read_json(out / "paper" / run.name / "linear.json")
        pre = read_json(out / "paper" / run.name / "pretrain.json")
        acc = None if lin is None else lin.get("val_acc1")
        rows.append({"run": run.name, "dataset": run.dataset, "method": run.method,
                     "backbone": run.backbone, "linear_top1": acc, "source": run.source,
                     "pretrain_wall_h": None if pre is None else pre["wall_s"] / 3600})
        if acc is not None:
            compare[(run.dataset, run.method, LINEAR_METRIC)] = acc
    lines = ["| run | dataset | method | linear top-1 % | pretrain wall-h |", "|---|---|---|---|---|"]
    lines += [f"| {r['run']} | {r['dataset']} | {r['method']} | {fmt(r['linear_top1'])} | "
              f"{fmt(r['pretrain_wall_h'])} |" for r in rows]
    done = sum(r["linear_top1"] is not None for r in rows)
    lines += ["", f"{done} of {len(rows)} runs evaluated (main_linear.py, 100 epochs; the "
                  "ImageNet-100 runs are evaluated at solo-learn's 224 px)."]
    return Report(markdown="\n".join(lines), data={"experiment": NAME, "scale": "paper", "rows": rows},
                  compare=compare)
