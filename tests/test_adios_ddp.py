"""ADIOS under Lightning DDP (2 CPU processes, gloo) and in mixed precision (needs a solo-learn
checkout).

* Two processes with ``DDPStrategy(find_unused_parameters=False)`` (what solo-learn's
  main_pretrain.py builds from ``strategy: ddp``) end with the weights of ONE process trained on
  the concatenated batches, float64; so do ``ddp_find_unused_parameters_true``, the fallback
  where DDP manages the masker, and one process under DDP. BYOL's momentum networks and batch
  counter stay identical on both processes. fp16 (autocast + GradScaler, on the CPU through
  Lightning's MixedPrecision plugin): an infinite masker gradient on one process makes BOTH skip
  the masker step.
* bf16-mixed losses through Lightning against float32.
* solo-learn's unmodified main_pretrain.py runs the shipped GPU configs (``strategy: ddp``,
  ``devices: [0, 1]``) on 2 CPU processes; main_linear.py reads the checkpoint.
* Per-view BatchNorm with statistics synchronised over processes (a CPU stand-in for
  SyncBatchNorm; the real one on 2 GPUs when there are).

The runs go through helper scripts in subprocesses: Lightning's DDP launcher re-runs the script.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from solo_helpers import checkout_or_skip, solo_command, write_images

CHECKOUT = checkout_or_skip()

pytestmark = pytest.mark.slow

TESTS = Path(__file__).parent
WORKER = TESTS / "adios_ddp_worker.py"
SYNCBN_WORKER = TESTS / "adios_syncbn_worker.py"
# maps devices=[0, 1] to 2 CPU processes for the unmodified main_pretrain.py (test harness only)
CPU_DEVICES = TESTS / "sitecustomize_cpu_devices"
CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS, PRETRAIN_PER_CLASS, SIZE = 6, 12, 4, 4, 64

# float64, BatchNorm replaced by GroupNorm in the backbone (SimCLR's projector and the masker
# (GroupNorm) have none): nothing depends on how the batch is split over processes
EXACT = {"method": "simclr", "precision": "64-true", "backbone_norm": "gn", "steps": 2}
ONE_PROCESS = [
    {"name": "reference", **EXACT, "batch": 8},
    {"name": "float32", "method": "simclr", "precision": "32-true", "batch": 8, "steps": 3,
     "save_state": False},
    {"name": "bf16", "method": "simclr", "precision": "bf16-mixed", "batch": 8, "steps": 3,
     "save_state": False},
    {"name": "ddp_one_process", **EXACT, "batch": 8, "strategy": "ddp"},  # last: inits gloo
]
TWO_PROCESSES = [
    {"name": "ddp", **EXACT, "batch": 4, "strategy": "ddp"},
    {"name": "ddp_find_unused_parameters_true", **EXACT, "batch": 4,
     "strategy": "ddp_find_unused_parameters_true"},
    {"name": "masker_in_ddp", **EXACT, "batch": 4, "strategy": "ddp", "masker_in_ddp": True},
    {"name": "byol", "method": "byol", "precision": "32-true", "batch": 4, "steps": 3,
     "strategy": "ddp"},
    {"name": "fp16", "method": "simclr", "precision": "16-mixed-cpu", "init_scale": 256,
     "batch": 4, "steps": 3, "strategy": "ddp", "inf_masker_grad": {"rank": 1, "batch": 1}},
]


def env(**extra):
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", **extra)


def train(out: Path, runs, devices: int) -> Path:
    command = [sys.executable, str(WORKER), str(out), json.dumps(runs), "--devices", str(devices)]
    run = subprocess.run(command, env=env(), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"worker failed:\n{run.stdout[-3000:]}\n{run.stderr[-6000:]}"
    return out


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    return train(tmp_path_factory.mktemp("one_process"), ONE_PROCESS, devices=1)


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> Path:
    return train(tmp_path_factory.mktemp("two_processes"), TWO_PROCESSES, devices=2)


def result(out: Path, name: str, rank: int = 0) -> dict:
    return torch.load(out / name / f"rank{rank}.pt")


def parameters(res: dict) -> dict:
    return {name: res["state"][name] for name in res["parameters"]}


# ------------------------------------------------------------------ two processes == one process
@pytest.mark.parametrize("run", ["ddp", "ddp_find_unused_parameters_true", "masker_in_ddp"])
def test_two_processes_end_with_the_weights_of_one_process_on_the_whole_batch(
        one_process, two_processes, run):
    """2 processes x 4 images for 2 batches == 1 process x 8 images (rank 0's half first), for
    the backbone, projector, classifier and masker, float64 (measured: largest relative
    difference 7e-15), and the two replicas are bit-identical. Each process built its model from
    a different seed: DDP's broadcast (encoder) and ADIOS' (masker) gave both rank 0's."""
    reference = parameters(result(one_process, "reference"))
    ranks = [result(two_processes, run, rank) for rank in (0, 1)]
    assert {name.split(".")[0] for name in reference} == {"backbone", "projector", "classifier",
                                                          "masker"}
    for res in ranks:
        assert res["masker_in_ddp"] == (run == "masker_in_ddp")
        assert int(res["state"]["adios_batches"]) == 2
        weights = parameters(res)
        assert weights.keys() == reference.keys()
        for name, value in reference.items():
            torch.testing.assert_close(weights[name], value, rtol=1e-9, atol=1e-12, msg=name)
    for name, value in parameters(ranks[0]).items():
        assert torch.equal(value, parameters(ranks[1])[name]), name
    # the logged SSL loss (averaged over the processes) is the 1-process loss
    for one, two in zip(result(one_process, "reference")["steps"], ranks[0]["steps"]):
        assert two["train_adios_ssl_loss"] == pytest.approx(one["train_adios_ssl_loss"], rel=1e-12)
        assert two["masker_moved"] and two["encoder_moved"]


def test_one_process_under_ddp_equals_no_ddp(one_process):
    """strategy ddp with a single process (DDP wrapper, world size 1) == no DDP at all."""
    reference = parameters(result(one_process, "reference"))
    under_ddp = parameters(result(one_process, "ddp_one_process"))
    for name, value in reference.items():
        torch.testing.assert_close(under_ddp[name], value, rtol=1e-12, atol=1e-15, msg=name)


def test_byol_momentum_networks_and_batch_counter_stay_identical_on_both_processes(two_processes):
    """BYOL-ADIOS (BatchNorm everywhere, float32): after 3 batches every parameter, the momentum
    backbone and projector included, is bit-identical on both processes, and the batch counter
    (which drives tau and the schedules) is 3 on both. BatchNorm running statistics are not
    compared: under Lightning's manual optimization DDP broadcasts buffers at the first forward
    only, so each process keeps its own (rank 0's are the ones in the checkpoint)."""
    ranks = [result(two_processes, "byol", rank) for rank in (0, 1)]
    weights = [parameters(res) for res in ranks]
    assert any(name.startswith("momentum_backbone.") for name in weights[0])
    assert any(name.startswith("momentum_projector.") for name in weights[0])
    for name, value in weights[0].items():
        assert torch.equal(value, weights[1][name]), name
    for res in ranks:
        assert int(res["state"]["adios_batches"]) == 3
        assert all(step["masker_moved"] and step["encoder_moved"] for step in res["steps"])


def test_fp16_an_infinite_masker_gradient_on_one_process_skips_the_step_on_both(two_processes):
    """fp16 autocast + GradScaler (init scale 256), 2 processes: rank 1 alone gets an infinite
    masker gradient at batch 1. The all-reduce before the masker's optimizer step hands it to
    rank 0 too, so both GradScalers skip that masker step and halve the scale; the encoder steps
    every batch; the replicas stay identical."""
    ranks = [result(two_processes, "fp16", rank) for rank in (0, 1)]
    for res in ranks:
        steps = res["steps"]
        assert [s["masker_moved"] for s in steps] == [True, False, True]
        assert [s["encoder_moved"] for s in steps] == [True, True, True]
        assert [s["scale"] for s in steps] == [256.0, 128.0, 128.0]
    for name, value in parameters(ranks[0]).items():
        assert torch.equal(value, parameters(ranks[1])[name]), name


def test_a_nan_loss_on_one_process_stops_every_process_with_the_error(tmp_path):
    """A NaN encoder loss on rank 1 only: both processes raise ADIOS' FloatingPointError (the
    finiteness check is all-reduced). Checked alone, rank 1 would stop and rank 0 would wait in
    the encoder's all-reduce: with gloo it fails on the closed connection, with NCCL it would
    hang until the process-group timeout (30 min by default)."""
    runs = [{"name": "nan", "method": "simclr", "precision": "32-true", "batch": 4, "steps": 2,
             "strategy": "ddp", "nan_loss": {"rank": 1, "batch": 0}, "save_state": False}]
    command = [sys.executable, str(WORKER), str(tmp_path), json.dumps(runs), "--devices", "2"]
    run = subprocess.run(command, env=env(), capture_output=True, text=True, timeout=300)
    output = run.stdout + run.stderr
    assert run.returncode != 0
    for rank in (0, 1):
        assert f"non-finite ADIOS encoder loss ({'nan' if rank else ''}" in output
        assert f"on process {rank} of 2; at least one process has a non-finite loss" in output


# ---------------------------------------------------------------------------------- bf16-mixed
def test_bf16_mixed_losses_are_close_to_float32(one_process):
    """precision=bf16-mixed vs 32-true, same weights and batches, 3 batches of 8 (SimCLR-ADIOS,
    CPU). First batch (before any update): SSL and encoder loss within 2 % (measured 0.25 % and
    0.01 %), sparsity penalty within 1e-3 (measured 5e-6). Later batches drift apart with the
    weights: SSL loss within 10 % (measured <= 2.4 %). Everything finite. (On CPUs autocast
    leaves more of solo-learn's loss in bfloat16 than CUDA autocast does.)"""
    f32 = result(one_process, "float32")["steps"]
    bf16 = result(one_process, "bf16")["steps"]
    assert len(f32) == len(bf16) == 3
    for step in f32 + bf16:
        assert all(np.isfinite(v) for k, v in step.items() if not k.endswith("moved"))
    first32, first16 = f32[0], bf16[0]
    assert first16["train_adios_ssl_loss"] == pytest.approx(first32["train_adios_ssl_loss"],
                                                            rel=2e-2)
    assert first16["loss"] == pytest.approx(first32["loss"], rel=2e-2)
    assert first16["train_mask_penalty"] == pytest.approx(first32["train_mask_penalty"], rel=1e-3)
    for a, b in zip(f32, bf16):
        assert b["train_adios_ssl_loss"] == pytest.approx(a["train_adios_ssl_loss"], rel=0.1)


# ------------------------------------------------------------- per-view BatchNorm over processes
def free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def synced_per_view_batch_norm(tmp_path, backend: str) -> dict:
    out = tmp_path / "syncbn.json"
    run = subprocess.run([sys.executable, str(SYNCBN_WORKER), str(out), "--backend", backend,
                          "--port", free_port()], env=env(), capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads(out.read_text())


def test_per_view_batch_norm_synchronised_over_two_processes_cpu_stand_in(tmp_path):
    """2 gloo processes, each with half of each of 3 views, BatchNorm layers that gather their
    statistics over the processes per call (a CPU stand-in with SyncBatchNorm's contract: torch
    has no SyncBatchNorm on CPUs): the batched per-view forward equals one process normalising
    each whole view on its own; outputs, summed gradients, running statistics (float64)."""
    res = synced_per_view_batch_norm(tmp_path, "gloo")
    assert res["layers"] == ["AllReduceBatchNorm2d"] and res["num_batches_tracked"] == 3
    assert res["output"] < 1e-12 and res["running_stats"] < 1e-12
    assert res["gradient"] < 1e-12 * max(1.0, res["gradient_scale"])


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs (NCCL)")
def test_per_view_batch_norm_with_torch_sync_batch_norm_on_two_gpus(tmp_path):  # pragma: no cover
    """The same with torch.nn.SyncBatchNorm, 2 NCCL processes, one GPU each (float32)."""
    res = synced_per_view_batch_norm(tmp_path, "nccl")
    assert res["layers"] == ["SyncBatchNorm"] and res["num_batches_tracked"] == 3
    assert res["output"] < 1e-4 and res["running_stats"] < 1e-4
    assert res["gradient"] < 1e-4 * max(1.0, res["gradient_scale"])


# ----------------------------------------- solo-learn's main_pretrain.py, shipped GPU configs
@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """6 classes of 64x64 PNGs: a coloured square (class colour) on noise; ``pretrain`` is a
    small training split (24 images)."""
    return write_images(tmp_path_factory.mktemp("images"),
                        {"train": TRAIN_PER_CLASS, "val": VAL_PER_CLASS,
                         "pretrain": PRETRAIN_PER_CLASS}, CLASSES, SIZE)


def solo(script: str, config: str, *overrides: str, cwd: Path, extra_env=None):
    command = solo_command(CHECKOUT, script, config, *overrides)
    run = subprocess.run(command, cwd=cwd, env=env(**(extra_env or {})), capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, f"{script} failed:\n{run.stdout[-3000:]}\n{run.stderr[-6000:]}"
    return run


def pretrain_on_two_cpu_processes(config: str, images: Path, out: Path) -> Path:
    """The shipped GPU config with only what a CPU needs changed: 2 CPU processes for
    devices=[0, 1] (strategy stays ddp), bf16 (fp16 autocast is CUDA-only in Lightning), no
    SyncBatchNorm (GPU-only in torch); 24 images, batch 4 per process, 64 px crops, a
    narrower masker."""
    pythonpath = os.pathsep.join(filter(None, [str(CPU_DEVICES), os.environ.get("PYTHONPATH")]))
    solo("main_pretrain.py", config, "accelerator=cpu", "devices=[0,1]", "sync_batchnorm=false",
         "precision=bf16-mixed", "data.dataset=custom", f"data.train_path={images / 'pretrain'}",
         "data.val_path=null", "data.num_workers=0", "optimizer.batch_size=4", "max_epochs=1",
         f"checkpoint.dir={out}", "augmentations.0.crop_size=64",
         "method_kwargs.mask_fbase=16", cwd=out, extra_env={"PYTHONPATH": pythonpath})
    (ckpt,) = (out / config.split("stl10_")[-1]).glob("*/*.ckpt")
    return ckpt


@pytest.mark.parametrize("config", ["stl10_simclr_adios", "stl10_byol_adios",
                                    "stl10_simsiam_adios"])
def test_main_pretrain_runs_a_shipped_gpu_config_on_two_processes(images, tmp_path, config):
    ckpt = pretrain_on_two_cpu_processes(config, images, tmp_path)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    weights = state["state_dict"]
    assert any(k.startswith("backbone.") for k in weights)
    assert any(k.startswith("masker.") for k in weights)
    # 24 images over 2 processes, 4 per batch: 3 batches each (1 process would take 6), each
    # one encoder and one masker step
    assert int(weights["adios_batches"]) == 3 and state["global_step"] == 6
    args = json.loads((ckpt.parent / "args.json").read_text())
    assert args["strategy"] == "ddp" and args["devices"] == [0, 1]
    if config == "stl10_simclr_adios":
        linear_reads_every_backbone_key(ckpt, images, tmp_path / "linear")


def linear_reads_every_backbone_key(ckpt: Path, images: Path, out: Path) -> None:
    """solo-learn's main_linear.py (config cpu_linear) trains a linear head on the checkpoint:
    no backbone key is missing, and its frozen backbone is the pretrained one."""
    sys.path.insert(0, str(CHECKOUT))
    from solo.methods.base import BaseMethod

    backbone = BaseMethod._BACKBONES["resnet18"](method="simclr")
    backbone.fc = torch.nn.Identity()
    pretrained = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    provided = {k[len("backbone."):] for k in pretrained if k.startswith("backbone.")}
    assert set(backbone.state_dict()) - provided == set()
    out.mkdir()
    solo("main_linear.py", "cpu_linear", f"data.train_path={images / 'train'}",
         f"data.val_path={images / 'val'}", "max_epochs=1", f"checkpoint.dir={out}",
         "data.num_workers=0", "pretrain_method=simclr_adios",
         f'pretrained_feature_extractor="{ckpt}"', cwd=out)
    (linear_ckpt,) = (out / "linear").glob("*/*.ckpt")
    linear = torch.load(linear_ckpt, map_location="cpu", weights_only=True)["state_dict"]
    for name, _ in backbone.named_parameters():
        torch.testing.assert_close(linear[f"backbone.{name}"], pretrained[f"backbone.{name}"],
                                   rtol=0, atol=0)
