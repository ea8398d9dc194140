"""Helper of tests/test_adios_ddp.py (no ``test_`` prefix: pytest does not collect it).

Trains ADIOS models with a Lightning ``Trainer`` for a few batches of fixed random tensors and
saves, per run and per process, the weights and a few per-step numbers:

    python tests/adios_ddp_worker.py OUT RUNS_JSON --devices 2

``RUNS_JSON`` is a list of runs, each a dict with "name", "method" (simclr | byol),
"strategy" (ddp | ddp_find_unused_parameters_true | auto), "precision" (a Trainer precision,
or "16-mixed-cpu": fp16 autocast + GradScaler on the CPU, starting at "init_scale"), "batch"
(per process), "steps", and optionally "backbone_norm" (bn | gn), "alpha_entropy",
"masker_in_ddp" (true: let DDP manage the masker, the fallback path), "inf_masker_grad"
({"rank", "batch"}: one infinite masker gradient on that process at that batch), "nan_loss"
(the same for a NaN encoder loss) and "save_state" (default true). With ``--devices 2``
Lightning's DDP launcher re-runs this script for rank 1 (gloo, CPU); ``strategy: ddp`` is
``DDPStrategy(find_unused_parameters=False)``, exactly as solo-learn's main_pretrain.py builds
it.

Data: step ``s`` of a run uses one "full" batch of ``processes * batch`` images; process ``r``
trains on rows ``r * batch : (r + 1) * batch`` (``use_distributed_sampler=False``), so a
1-process run with ``batch = 2 * b`` sees exactly what 2 processes with ``batch = b`` see
together (rank 0's half first). Indexes are distinct over the full batch (SimCLR's positives).
Every process builds its model from the seed ``1000 + rank``: the processes start from different
weights and must end up with rank 0's (DDP broadcasts the modules it manages; ADIOS broadcasts
the masker).

Results: ``OUT/<name>/rank<r>.pt`` = ``{"state": state_dict, "parameters": [parameter names],
"steps": [{logged numbers}, ...], "masker_in_ddp": bool}``.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

CLASSES = 6


def build(method: str, batch: int, devices: int, alpha_entropy: float, out: Path):
    """An ADIOS model built as main_pretrain.py builds it, from the shipped CPU config, small."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf
    from solo.args.pretrain import parse_cfg
    from solo.methods import METHODS

    from adios_ssl.sololearn.register import register

    register()
    classes = out / "classes"
    for c in range(CLASSES):  # solo-learn counts the class folders of a custom dataset
        (classes / f"class{c}").mkdir(parents=True, exist_ok=True)
    overrides = [
        f"data.train_path={classes}", f"optimizer.batch_size={batch}",
        f"devices=[{','.join(str(d) for d in range(devices))}]",
        "augmentations.0.crop_size=32", "method_kwargs.N=2", "method_kwargs.mask_fbase=8",
        "method_kwargs.proj_hidden_dim=64", "method_kwargs.proj_output_dim=32",
        f"++method_kwargs.alpha_entropy={alpha_entropy}", "scheduler.warmup_epochs=0",
        "++method_kwargs.mask_pictures.enabled=false",
    ]
    if method == "byol":
        overrides.append("method_kwargs.pred_hidden_dim=64")
    with initialize_config_module("adios_ssl.configs", version_base="1.2"):
        cfg = compose(f"cpu_{method}_adios", overrides=overrides)
    OmegaConf.set_struct(cfg, False)
    cfg = parse_cfg(cfg)
    return METHODS[cfg.method](cfg)


def batch_norm_to_group_norm(module: torch.nn.Module) -> None:
    """Replace every BatchNorm2d by GroupNorm(8): per-sample statistics, so a model trained on
    two halves of a batch in two processes can equal one trained on the whole batch."""
    for name, child in module.named_children():
        if isinstance(child, torch.nn.BatchNorm2d):
            setattr(module, name, torch.nn.GroupNorm(8, child.num_features))
        else:
            batch_norm_to_group_norm(child)


def batches(steps: int, full_batch: int, rank: int, per_rank: int):
    generator = torch.Generator().manual_seed(123)
    out = []
    for step in range(steps):
        x = torch.randn(2, full_batch, 3, 32, 32, generator=generator)
        indexes = torch.arange(step * full_batch, (step + 1) * full_batch)
        rows = slice(rank * per_rank, (rank + 1) * per_rank)
        out.append([indexes[rows], [x[0, rows], x[1, rows]], indexes[rows] % CLASSES])
    return out


def run(spec: dict, devices: int, out: Path) -> None:
    import lightning.pytorch as pl
    from lightning.pytorch.plugins.precision import MixedPrecision
    from lightning.pytorch.strategies import DDPStrategy
    from torch.utils.data import DataLoader

    rank = int(os.environ.get("LOCAL_RANK", 0))
    torch.manual_seed(1000 + rank)
    model = build(spec["method"], spec["batch"], devices, spec.get("alpha_entropy", 0.0), out)
    if spec.get("backbone_norm", "bn") == "gn":
        batch_norm_to_group_norm(model.backbone)
    if spec.get("masker_in_ddp"):  # exercise the fallback: DDP manages the masker too
        model.__dict__.pop("_ddp_params_and_buffers_to_ignore", None)
        for p in model.masker.parameters():
            p.__dict__.pop("_ddp_ignored", None)
    inf = spec.get("inf_masker_grad")
    if inf:  # a non-finite masker gradient on one process only, at one batch (fp16 test)
        average = model._average_masker_grads

        def average_after_inf():
            if rank == inf["rank"] and int(model.adios_batches) == inf["batch"] + 1:
                next(model.masker.parameters()).grad.view(-1)[0] = float("inf")
            average()

        model._average_masker_grads = average_after_inf
    nan = spec.get("nan_loss")
    if nan:  # a NaN encoder loss on one process only, at one batch
        ssl_loss = model._ssl_loss

        def ssl_loss_with_nan(batch, masks, grad_through_views):
            ssl, per_mask, class_loss = ssl_loss(batch, masks, grad_through_views)
            if rank == nan["rank"] and int(model.adios_batches) == nan["batch"]:
                ssl = ssl * float("nan")
            return ssl, per_mask, class_loss

        model._ssl_loss = ssl_loss_with_nan
    steps = []
    before = {}

    def snapshot(module):
        return torch.cat([p.detach().reshape(-1).clone() for p in module.parameters()])

    class Record(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            before.update(masker=snapshot(pl_module.masker),
                          projector=snapshot(pl_module.projector))

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            metrics = trainer.callback_metrics
            step = {key: float(metrics[f"{key}_step"]) for key in
                    ("train_adios_ssl_loss", "train_mask_loss", "train_mask_penalty")
                    if f"{key}_step" in metrics}
            step["loss"] = float(outputs["loss"] if isinstance(outputs, dict) else outputs)
            step["masker_moved"] = not torch.equal(before["masker"], snapshot(pl_module.masker))
            step["encoder_moved"] = not torch.equal(before["projector"],
                                                    snapshot(pl_module.projector))
            scaler = getattr(trainer.precision_plugin, "scaler", None)
            if scaler is not None:
                step["scale"] = float(scaler.get_scale())
            steps.append(step)

    strategy = spec.get("strategy", "auto")
    if strategy == "ddp":
        strategy = DDPStrategy(find_unused_parameters=False)  # as main_pretrain.py
    precision, plugins = spec["precision"], []
    if precision == "16-mixed-cpu":  # Lightning turns precision="16-mixed" into bf16 on CPUs
        scaler = torch.amp.GradScaler("cpu", init_scale=spec.get("init_scale", 2.0 ** 16))
        precision, plugins = None, [MixedPrecision("16-mixed", "cpu", scaler=scaler)]
    trainer = pl.Trainer(
        accelerator="cpu", devices=devices, strategy=strategy, precision=precision,
        plugins=plugins, max_epochs=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
        callbacks=[Record()],
        default_root_dir=str(out / spec["name"]))
    data = batches(spec["steps"], devices * spec["batch"], rank, spec["batch"])
    trainer.fit(model, DataLoader(data, batch_size=None))
    state = ({k: v.detach().clone() for k, v in model.state_dict().items()}
             if spec.get("save_state", True) else {})
    (out / spec["name"]).mkdir(parents=True, exist_ok=True)
    torch.save({"state": state, "parameters": [n for n, _ in model.named_parameters()],
                "steps": steps, "masker_in_ddp": model._adios_masker_in_ddp},
               out / spec["name"] / f"rank{trainer.global_rank}.pt")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("runs", help="JSON list of runs (see the module docstring)")
    parser.add_argument("--devices", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from adios_ssl.sololearn.locate import ensure_importable

    ensure_importable()
    for spec in json.loads(args.runs):
        run(spec, args.devices, args.out)


if __name__ == "__main__":
    main()
