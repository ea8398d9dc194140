"""ADIOS through solo-learn's own, unmodified scripts (needs a solo-learn checkout).

Every run is ``python <checkout>/main_pretrain.py --config-path pkg://adios_ssl.configs ...``
(or ``main_linear.py``) in a subprocess, on a small image folder, on the CPU.
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from solo_helpers import build_method, checkout_or_skip, solo_command, write_images

from adios_ssl.sololearn.locate import PINNED_COMMIT

CHECKOUT = checkout_or_skip()

pytestmark = pytest.mark.slow

METHODS = ["simclr", "byol", "simsiam", "barlow_twins", "vicreg"]
CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS, SIZE = 6, 12, 4, 64
BATCH = 32  # base/cpu_data.yaml
BATCHES_PER_EPOCH = CLASSES * TRAIN_PER_CLASS // BATCH  # drop_last=True


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """6 classes of 64x64 PNGs: a coloured square (class colour) on noise."""
    return write_images(tmp_path_factory.mktemp("images"),
                        {"train": TRAIN_PER_CLASS, "val": VAL_PER_CLASS}, CLASSES, SIZE)


def solo(script: str, config: str, *overrides: str, cwd: Path, timeout: int = 600,
         background: bool = False):
    command = solo_command(CHECKOUT, script, config, *overrides)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    if background:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
    run = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert run.returncode == 0, f"{script} failed:\n{run.stdout[-3000:]}\n{run.stderr[-6000:]}"
    return run


def pretrain_args(images: Path, out: Path, epochs: int = 1):
    return (f"data.train_path={images / 'train'}", f"max_epochs={epochs}",
            f"checkpoint.dir={out}", "data.num_workers=0", "++log_every_n_steps=1")


def checkpoints(out: Path, method: str):
    return sorted((out / method).glob("*/*.ckpt"), key=lambda p: p.stat().st_mtime)


@pytest.fixture(scope="module")
def pretrained(images, tmp_path_factory):
    """One epoch of every ADIOS method; {method: (checkpoint, run folder, working folder)}."""
    runs = {}
    for method in METHODS:
        out = tmp_path_factory.mktemp(method)
        solo("main_pretrain.py", f"cpu_{method}_adios", *pretrain_args(images, out), cwd=out)
        (ckpt,) = checkpoints(out, f"{method}_adios")
        runs[method] = (ckpt, ckpt.parent, out)
    return runs


def _no_constant(name: str):
    raise ValueError(f"{name} in a JSON file (not strict JSON)")


def logged(out: Path, column: str):
    """Per-step values of one metric from the CSV log Lightning writes in the run's folder."""
    import csv

    (log,) = out.glob("lightning_logs/*/metrics.csv")
    rows = list(csv.DictReader(log.open()))
    return [(int(r["step"]), float(r[column])) for r in rows if r.get(column)]


@pytest.mark.parametrize("method", METHODS)
def test_pretrain_writes_a_loadable_checkpoint_and_mask_pictures(pretrained, method):
    ckpt, folder, _ = pretrained[method]
    # torch>=2.6 default weights_only=True: no functools.partial / omegaconf objects inside
    state = torch.load(ckpt, map_location="cpu")
    weights = state["state_dict"]
    assert any(k.startswith("backbone.") for k in weights)
    assert any(k.startswith("masker.unet.") for k in weights) and "masker.head.weight" in weights
    # two optimizers: the encoder's (from BaseMethod) and the masker's
    assert len(state["optimizer_states"]) == 2 and len(state["lr_schedulers"]) == 2
    masker_params = state["optimizer_states"][1]["param_groups"][0]["params"]
    assert len(masker_params) == sum(1 for k in weights if k.startswith("masker."))
    # one encoder and one masker step per batch; global_step counts both
    assert int(weights["adios_batches"]) == BATCHES_PER_EPOCH
    assert state["global_step"] == 2 * BATCHES_PER_EPOCH
    args = json.loads((folder / "args.json").read_text())
    assert args["method"] == f"{method}_adios" and args["method_kwargs"]["N"] == 4
    # provenance.json beside it: strict JSON, the same resolved config (ADIOS defaults filled
    # in), the code that ran it, and what the config resolved to
    record = json.loads((folder / "provenance.json").read_text(), parse_constant=_no_constant)
    assert record["config"] == {k: v for k, v in args.items() if k != "wandb_run_id"}
    assert record["config"]["method_kwargs"]["single_mask_entropy"] == "per_view"
    solo_learn = record["provenance"]["upstream"]["solo-learn"]
    assert solo_learn["pinned"] == PINNED_COMMIT and len(solo_learn["commit"]) == 40
    assert record["provenance"]["engine"] == {"device": "cpu", "world_size": 1,
                                              "precision": "32-true"}
    assert record["provenance"]["libraries"]["lightning"] is not None
    assert record["adios"]["masker_parameters"] == sum(
        v.numel() for k, v in weights.items() if k.startswith("masker.") and "running" not in k
        and "num_batches" not in k)
    assert record["resumed_from"] is None and record["earlier"] == []
    picture = folder / "masks" / "masks-ep=0.png"
    assert picture.is_file() and picture.stat().st_size > 10_000


def test_masker_moved_and_masks_partition_the_image(pretrained):
    """After an epoch the masker differs from its initialisation, and its masks (N=4) sum to 1."""
    from adios_ssl import MaskingNetwork

    ckpt, _, _ = pretrained["simclr"]
    weights = torch.load(ckpt, map_location="cpu")["state_dict"]
    masker = MaskingNetwork(64, 4, 16, "gn")
    masker.load_state_dict({k[len("masker."):]: v for k, v in weights.items()
                            if k.startswith("masker.")})
    torch.manual_seed(0)
    fresh = MaskingNetwork(64, 4, 16, "gn").state_dict()
    assert any(not torch.equal(fresh[k], v) for k, v in masker.state_dict().items()
               if k.endswith("weight"))
    masks = masker(torch.randn(2, 3, 64, 64))
    torch.testing.assert_close(masks.sum(1), torch.ones(2, 64, 64))


@pytest.mark.parametrize("method", ["simsiam", "byol"])
def test_main_linear_loads_every_backbone_key_and_trains(pretrained, images, tmp_path, method):
    """solo-learn's main_linear.py reads the ADIOS checkpoint (SimSiam's static-lr predictor
    and BYOL's momentum networks included): every backbone tensor is there, and the frozen
    backbone in the linear checkpoint equals the pretrained one."""
    ckpt, _, _ = pretrained[method]
    sys.path.insert(0, str(CHECKOUT))
    from solo.methods.base import BaseMethod

    backbone = BaseMethod._BACKBONES["resnet18"](method="simclr")
    backbone.fc = torch.nn.Identity()
    pretrained_weights = torch.load(ckpt, map_location="cpu")["state_dict"]
    provided = {k[len("backbone."):] for k in pretrained_weights if k.startswith("backbone.")}
    assert set(backbone.state_dict()) - provided == set()

    solo("main_linear.py", "cpu_linear", f"data.train_path={images / 'train'}",
         f"data.val_path={images / 'val'}", "max_epochs=1", f"checkpoint.dir={tmp_path}",
         "data.num_workers=0", f"pretrain_method={method}_adios",
         f'pretrained_feature_extractor="{ckpt}"', cwd=tmp_path)
    (linear_ckpt,) = (tmp_path / "linear").glob("*/*.ckpt")
    linear = torch.load(linear_ckpt, map_location="cpu")["state_dict"]
    params = dict(backbone.named_parameters())
    for name in params:
        torch.testing.assert_close(linear[f"backbone.{name}"], pretrained_weights[f"backbone.{name}"],
                                   rtol=0, atol=0)
    assert linear["classifier.weight"].shape == (CLASSES, 512)


def test_interrupted_run_resumes_where_it_stopped(images, tmp_path):
    """Kill a 3-epoch run after its first checkpoint; the same command resumes from it
    (solo-learn's auto_resume) and the batch counter driving ADIOS' schedules continues."""
    args = pretrain_args(images, tmp_path, epochs=3)
    first = solo("main_pretrain.py", "cpu_byol_adios", *args, cwd=tmp_path, background=True)
    deadline = time.time() + 300
    try:
        # the pictures callback runs after solo-learn's Checkpointer at epoch end
        while not list(tmp_path.glob("byol_adios/*/masks/masks-ep=0.png")):
            assert first.poll() is None, first.stdout.read()[-3000:]
            assert time.time() < deadline, "no epoch-0 checkpoint within 300 s"
            time.sleep(0.2)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    (interrupted,) = checkpoints(tmp_path, "byol_adios")
    assert torch.load(interrupted, map_location="cpu")["epoch"] == 0

    second = solo("main_pretrain.py", "cpu_byol_adios", *args, cwd=tmp_path)
    assert "Resuming from previous checkpoint" in second.stdout + second.stderr
    final = torch.load(checkpoints(tmp_path, "byol_adios")[-1], map_location="cpu")
    assert final["epoch"] == 2
    assert int(final["state_dict"]["adios_batches"]) == 3 * BATCHES_PER_EPOCH
    assert final["global_step"] == 2 * 3 * BATCHES_PER_EPOCH
    # the resumed process trained epochs 1 and 2 only
    metrics = sorted(tmp_path.glob("lightning_logs/*/metrics.csv"))[-1].read_text().splitlines()
    header = metrics[0].split(",")
    epochs = {int(float(row.split(",")[header.index("epoch")])) for row in metrics[1:]}
    assert epochs == {1, 2}
    # both starts are recorded; the second names the checkpoint it resumed from
    records = []
    for path in tmp_path.glob("byol_adios/*/provenance.json"):
        record = json.loads(path.read_text())
        records += [record] + record["earlier"]
    assert sorted(str(r["resumed_from"] and Path(r["resumed_from"]).resolve())
                  for r in records) == sorted(["None", str(interrupted.resolve())])


def test_gradient_accumulation_is_refused_with_a_clear_error(images, tmp_path):
    command = [sys.executable, str(CHECKOUT / "main_pretrain.py"), "--config-path",
               "pkg://adios_ssl.configs", "--config-name", "cpu_simclr_adios",
               *pretrain_args(images, tmp_path), "accumulate_grad_batches=2"]
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert run.returncode != 0
    assert "accumulate_grad_batches=2" in run.stderr and "set accumulate_grad_batches: 1" in run.stderr
    # refused by the configs' Hydra callback before solo-learn built or wrote anything
    assert "Traceback" not in run.stderr and not list(tmp_path.rglob("args.json"))


def test_byol_tau_follows_batches_not_optimizer_steps(pretrained):
    """BYOL's EMA momentum follows solo-learn's cosine schedule over *batches*: with two
    optimizer steps per batch, trainer.global_step would reach the end of the schedule at half
    the run. 1 epoch = 2 batches: tau is 0.99 on batch 0 and 1 - 0.01 * (cos(pi/2) + 1) / 2 =
    0.995 on batch 1 (it would be 1.0 with global_step)."""
    _, _, out = pretrained["byol"]
    taus = [tau for _, tau in logged(out, "tau")]
    expected = [0.99] + [1.0 - 0.01 * (math.cos(math.pi * k / BATCHES_PER_EPOCH) + 1) / 2
                         for k in range(1, BATCHES_PER_EPOCH)]
    assert taus == pytest.approx(expected, abs=1e-7)


def build(config: str, images: Path, *overrides: str):
    """A solo-learn model built as main_pretrain.py builds it (same config composition)."""
    return build_method(CHECKOUT, images, config, *overrides)[0]


@pytest.mark.parametrize("config,overrides", [
    ("cpu_simclr_adios", ()),
    ("cpu_byol_adios", ()),
    ("cpu_simsiam_adios", ()),
    ("cpu_simsiam_adios", ("+method_kwargs.symmetric_pairs=false",)),
    ("cpu_vicreg_adios", ("+method_kwargs.single_mask=true",)),
])
def test_batched_masked_views_equal_the_official_loop_inside_solo_learn(images, config, overrides):
    """The plugin's loss (original views encoded once, N masked views in one batch) equals the
    official order (original re-encoded per mask, masked views one by one): value, per-mask
    terms and encoder gradients, through each solo-learn method's own training_step."""
    import copy

    torch.manual_seed(0)
    model = build(config, images, *overrides).double()
    model._adios_mute = True  # no trainer to log to
    x1, x2 = torch.randn(2, 8, 3, 64, 64, dtype=torch.float64)
    batch = [torch.arange(8), [x1, x2], torch.arange(8) % CLASSES]
    results = []
    for batched in (True, False):
        twin = copy.deepcopy(model)
        twin.adios_batched = batched
        torch.manual_seed(1)  # ADIOS-s draws its mask choice from the global generator
        with torch.no_grad():
            masks = twin._masks(x1, x2)
        ssl, per_mask, class_loss = twin._ssl_loss(batch, masks, grad_through_views=True)
        (ssl + class_loss).backward()
        grads = {n: p.grad for n, p in twin.named_parameters() if p.grad is not None}
        results.append((ssl.detach(), torch.stack(per_mask).detach(), grads))
    (ssl_b, per_b, grads_b), (ssl_l, per_l, grads_l) = results
    assert len(per_b) == (1 if "single_mask" in str(overrides) else 4)
    torch.testing.assert_close(ssl_b, ssl_l, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(per_b, per_l, rtol=1e-9, atol=1e-12)
    assert grads_b.keys() == grads_l.keys() and any(k.startswith("backbone.") for k in grads_b)
    assert not any(k.startswith("masker.") for k in grads_b)  # masks were detached
    for name in grads_b:
        torch.testing.assert_close(grads_b[name], grads_l[name], rtol=1e-7, atol=1e-10)


PAPER_CONFIGS = sorted(p.stem for p in (Path(__file__).parents[1] / "plugins" / "adios_ssl"
                                        / "configs").glob("*_adios*.yaml"))


@pytest.mark.parametrize("config", PAPER_CONFIGS)
def test_every_shipped_config_builds_its_method(images, config):
    """Each shipped config composes, passes solo-learn's parse_cfg and builds its method with a
    masker sized for the training crops; mask_lr follows solo-learn's batch_size/256 scaling."""
    from hydra import compose, initialize_config_module

    model = build(config, images, f"data.val_path={images / 'val'}")
    with initialize_config_module("adios_ssl.configs", version_base="1.2"):
        raw = compose(config, overrides=[f"data.train_path={images / 'train'}"])
    crop = raw.augmentations[0].crop_size
    assert model.masker.img_size == crop == model.adios_img_size
    assert model.masker.num_masks == raw.method_kwargs.N
    assert model.mask_lr == pytest.approx(raw.method_kwargs.mask_lr * raw.optimizer.batch_size / 256)
    assert type(model).__name__.lower().startswith(raw.method.split("_adios")[0].replace("_", ""))
    with torch.no_grad():
        masks = model.masker(torch.randn(2, 3, crop, crop))
    assert masks.shape == (2, raw.method_kwargs.N, crop, crop)


def test_a_lightning_training_step_leaves_the_same_weights_in_both_orders(images, tmp_path):
    """Two full ADIOS steps through Lightning (encoder update, then masker update on the masks
    computed once and reused) give the same weights as the official order (original view
    re-encoded per mask, masks computed again for the masker), float64."""
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader

    generator = torch.Generator().manual_seed(0)
    batches = [[torch.arange(8), list(torch.randn(2, 8, 3, 64, 64, generator=generator,
                                                  dtype=torch.float64)), torch.arange(8) % CLASSES]
               for _ in range(2)]
    weights = {}
    for computation in ("batched", "looped"):
        torch.manual_seed(0)
        model = build("cpu_simclr_adios", images, f"+method_kwargs.computation={computation}",
                      "optimizer.batch_size=8")
        trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=1, precision="64-true",
                             logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             default_root_dir=tmp_path / computation)
        trainer.fit(model, DataLoader(batches, batch_size=None))
        assert int(model.adios_batches) == 2 and trainer.global_step == 4
        # the encoder's and the masker's losses and the sparsity penalty are on the progress bar
        shown = {k.rsplit("_", 1)[0] for k in trainer.progress_bar_metrics}
        assert {"train_adios_ssl_loss", "train_mask_loss", "train_mask_penalty"} <= shown
        assert "mask_summed_min" not in shown and "mask_summed_min_epoch" in trainer.logged_metrics
        weights[computation] = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert any(n.startswith("masker.") for n in weights["batched"])
    for name, value in weights["batched"].items():
        torch.testing.assert_close(value, weights["looped"][name], rtol=1e-7, atol=1e-10)
    torch.manual_seed(0)
    initial = build("cpu_simclr_adios", images, "optimizer.batch_size=8").double()
    moved = {name.split(".")[0] for name, value in initial.named_parameters()
             if not torch.equal(value, weights["batched"][name])}
    assert moved == {"backbone", "projector", "classifier", "masker"}  # every network was updated


def test_wrapper_registers_the_methods_for_configs_without_the_callback(images, tmp_path):
    """`python -m adios_ssl.pretrain` (as the knn/umap wrappers do) registers the ADIOS methods
    itself: it runs a config whose Hydra callback was removed; plain main_pretrain.py cannot."""
    (tmp_path / "plain.yaml").write_text("""\
defaults:
  - base/cpu
  - base/cpu_data
  - _self_
hydra:
  searchpath: [pkg://adios_ssl.configs]
  output_subdir: null
  run:
    dir: .
name: plain-vicreg-adios
method: vicreg_adios
backbone:
  name: resnet18
method_kwargs: {proj_hidden_dim: 64, proj_output_dim: 64, N: 2, mask_fbase: 8}
checkpoint: {enabled: true, dir: trained_models, frequency: 1}
auto_resume: {enabled: false}
""")
    args = ["--config-path", str(tmp_path), "--config-name", "plain",
            *pretrain_args(images, tmp_path)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    plain = subprocess.run([sys.executable, str(CHECKOUT / "main_pretrain.py"), *args], cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=300)
    assert plain.returncode != 0 and "Choose from" in plain.stderr + plain.stdout
    wrapped = subprocess.run([sys.executable, "-m", "adios_ssl.pretrain", *args], cwd=tmp_path,
                             env=env, capture_output=True, text=True, timeout=600)
    assert wrapped.returncode == 0, wrapped.stderr[-4000:]
    assert len(checkpoints(tmp_path, "vicreg_adios")) == 1


def test_directional_simsiam_terms_are_the_official_ones(images):
    """simsiam_adios with symmetric_pairs=false (the paper's ImageNet100-S / STL-10 SimSiam runs):
    per mask, the mean of the official directional terms, written out with solo-learn's loss."""
    from solo.losses.simsiam import simsiam_loss_func

    torch.manual_seed(0)
    model = build("cpu_simsiam_adios", images, "+method_kwargs.symmetric_pairs=false").double()
    model._adios_mute = True
    x1, x2 = torch.randn(2, 8, 3, 64, 64, dtype=torch.float64)
    batch = [torch.arange(8), [x1, x2], torch.arange(8) % CLASSES]
    with torch.no_grad():
        masks = model._masks(x1, x2)
        _, per_mask, _ = model._ssl_loss(batch, masks, grad_through_views=True)
        expected = []
        for k in range(4):
            o1, o2 = model(x1), model(x2)
            m1, m2 = model(x1 * (1 - masks[0][:, k:k + 1])), model(x2 * (1 - masks[1][:, k:k + 1]))
            terms = [(m1, o2), (m2, o1), (o1, o2), (o2, o1), (m1, m2), (m2, m1)]  # masked, none, both
            expected.append(torch.stack([simsiam_loss_func(a["p"], b["z"]) for a, b in terms]).mean())
    torch.testing.assert_close(torch.stack(per_mask), torch.stack(expected), rtol=1e-9, atol=1e-12)


def test_symmetric_pairs_false_is_refused_without_a_directional_loss(images):
    from adios_ssl.sololearn.config import ADIOSConfigError

    with pytest.raises(ADIOSConfigError, match="only simsiam_adios defines"):
        build("cpu_simclr_adios", images, "+method_kwargs.symmetric_pairs=false")


@pytest.mark.parametrize("generator", ["random", "mae", "beit"])
def test_baseline_masks_train_with_one_optimizer(images, tmp_path, generator):
    """The paper's fixed-mask baselines: no masker, one optimizer, the second view hidden by a
    binary mask of the requested kind."""
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader

    torch.manual_seed(0)
    model = build("cpu_simclr_adios", images, f"+method_kwargs.mask_generator={generator}",
                  "optimizer.batch_size=8")
    assert model.masker is None
    x1, x2 = torch.randn(2, 8, 3, 64, 64)
    (none, masks) = model._masks(x1, x2)
    assert none is None and masks.shape == (8, 1, 64, 64)
    assert set(masks.unique().tolist()) <= {0.0, 1.0} and 0 < masks.mean() < 1
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         default_root_dir=tmp_path)
    trainer.fit(model, DataLoader([[torch.arange(8), [x1, x2], torch.arange(8) % CLASSES]],
                                  batch_size=None))
    assert len(trainer.optimizers) == 1 and int(model.adios_batches) == 1
    assert not torch.equal(before["backbone.conv1.weight"], model.backbone.conv1.weight)


def _solo_test_utils():
    """solo-learn's own test helpers (``tests/methods/utils.py`` of the checkout)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("solo_test_utils",
                                                  CHECKOUT / "tests" / "methods" / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_an_adios_method_builds_and_trains_from_solo_learns_own_test_config(tmp_path, monkeypatch):
    """Whatever config the parent method builds from, its ADIOS version builds from too: here
    solo-learn's test config (no augmentations, so no crop size; ``devices: 1``, an int), and
    one fit through solo-learn's own dummy loaders (224 px crops: the masker's default)."""
    from adios_ssl.sololearn.register import register

    register()
    from solo.methods import METHODS

    monkeypatch.chdir(tmp_path)  # the mask pictures go to ./masks without a checkpoint folder
    utils = _solo_test_utils()
    cfg = utils.gen_base_cfg("simclr_adios", batch_size=2, num_classes=10)
    cfg.method_kwargs = {"proj_output_dim": 32, "proj_hidden_dim": 64, "temperature": 0.2,
                         "N": 2, "mask_fbase": 8}
    model = METHODS["simclr_adios"](cfg)
    assert model.masker.img_size == 224 and model.mask_lr == pytest.approx(0.1 * 2 / 256)
    batch, _ = utils.gen_batch(2, 10, "imagenet100")
    assert model(batch[1][0])["z"].shape == (2, 32)
    before = [p.detach().clone() for p in model.masker.parameters()]
    train, val = utils.prepare_dummy_dataloaders("imagenet100", num_large_crops=2, num_classes=10,
                                                 batch_size=2)
    utils.gen_trainer(cfg).fit(model, train, val)
    assert int(model.adios_batches) == 1
    assert any(not torch.equal(a, b) for a, b in zip(before, model.masker.parameters()))
    assert (tmp_path / "masks" / "masks-ep=0.png").is_file()
