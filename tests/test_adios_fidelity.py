"""The plugin's defaults that follow the official ADIOS code (YugeTen/adios@21c6f23), each against
a reference computed directly, and the options that restore the plugin's earlier behaviour.

- the online classifier(s) train on both crops (the official ``linear_forward`` calls the base
  ``training_step``, which averages the crops);
- BYOL-ADIOS's encoder schedule ends ``train_mask_epoch`` = 10 epochs before ``max_epochs``
  (``base_adios.py``, ``BaseMomentumADIOSModel``); the masker's does not;
- SimSiam-ADIOS defaults: both views masked, all pairs, 4 UNet blocks (its command line);
- ADIOS-s with both views masked: one mask index per image for both views and one entropy term
  per view (``simsiam_adios_s.py``).

Models are built from the shipped CPU configs as solo-learn's ``main_pretrain.py`` builds them
(float64 where values are compared), on 64 px batches of 8.
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from solo_helpers import build_method, checkout_or_skip, write_images

from adios_ssl.masker import MaskingNetwork
from adios_ssl.objective import adios_ssl_loss, fraction_neg_entropy, sparsity_penalty
from adios_ssl.step import masker_update

CHECKOUT = checkout_or_skip()
CLASSES, SIZE, BATCH = 6, 64, 8


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return write_images(tmp_path_factory.mktemp("images"), {"train": 1}, CLASSES, SIZE)


def build(images: Path, config: str, *overrides: str):
    """(model, cfg) as main_pretrain.py builds them from a shipped config."""
    return build_method(CHECKOUT, images, config, *overrides)


def batch64(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x1, x2 = torch.randn(2, BATCH, 3, SIZE, SIZE, generator=g, dtype=torch.float64)
    return [torch.arange(BATCH), [x1, x2], torch.arange(BATCH) % CLASSES]


def crop_mean_ce(head, backbone, crops, targets):
    """The official BaseModel.training_step's class loss: the mean over the crops of the
    cross-entropy of the classifier on detached backbone features (training mode)."""
    return sum(F.cross_entropy(head(backbone(x).detach()), targets, ignore_index=-1)
               for x in crops) / len(crops)


# ------------------------------------------------------------------ online classifier
@pytest.mark.parametrize("views", ["both", "first"])
def test_online_classifier_loss_is_the_mean_over_both_crops(images, monkeypatch, views):
    """Encoder step: the classifier loss (and its gradient, and the logged train_class_loss /
    train_acc1) is the mean over the two crops, as the official ``linear_forward``;
    ``classifier_views: first`` keeps the first crop only (the plugin's earlier behaviour)."""
    from lightning.pytorch import LightningModule

    overrides = () if views == "both" else ("+method_kwargs.classifier_views=first",)
    torch.manual_seed(0)
    model, _ = build(images, "cpu_simclr_adios", *overrides)
    from solo.utils.metrics import accuracy_at_k  # importable once build registered solo-learn
    model = model.double()
    logged = {}
    monkeypatch.setattr(LightningModule, "log_dict",
                        lambda self, metrics, **kw: logged.update(metrics))
    monkeypatch.setattr(LightningModule, "log", lambda self, name, value, **kw: None)
    batch = batch64()
    (x1, x2), targets = batch[1], batch[2]
    crops = [x1, x2] if views == "both" else [x1]
    with torch.no_grad():
        masks = model._masks(x1, x2)
    _, _, class_loss = model._ssl_loss(batch, masks, grad_through_views=True)
    grad, = torch.autograd.grad(class_loss, model.classifier.weight)

    expected = crop_mean_ce(model.classifier, model.backbone, crops, targets)
    expected_grad, = torch.autograd.grad(expected, model.classifier.weight)
    torch.testing.assert_close(class_loss, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-9, atol=1e-12)
    with torch.no_grad():
        acc1 = sum(accuracy_at_k(model.classifier(model.backbone(x)), targets, top_k=(1, 5))[0]
                   for x in crops) / len(crops)
    assert float(logged["train_class_loss"]) == pytest.approx(expected.item(), rel=1e-10)
    assert float(logged["train_acc1"]) == pytest.approx(float(acc1), rel=1e-10)
    # the masker step re-runs the loss but does not train the classifier: no second crop there
    calls = []
    monkeypatch.setattr(type(model), "_second_crop_outputs",
                        lambda self, x: calls.append(x) or {})
    model._ssl_loss(batch, masks, grad_through_views=False)
    assert calls == []


def test_momentum_classifier_loss_is_the_mean_over_both_crops(images):
    """BYOL with ``momentum.classifier``: online and momentum classifiers each average both
    crops (the official BaseMomentumModel.training_step), their losses added."""
    torch.manual_seed(0)
    model, _ = build(images, "cpu_byol_adios", "+momentum.classifier=true")
    model = model.double()
    model._adios_mute = True
    batch = batch64(1)
    (x1, x2), targets = batch[1], batch[2]
    with torch.no_grad():
        masks = model._masks(x1, x2)
    _, _, class_loss = model._ssl_loss(batch, masks, grad_through_views=True)
    expected = (crop_mean_ce(model.classifier, model.backbone, [x1, x2], targets)
                + crop_mean_ce(model.momentum_classifier, model.momentum_backbone, [x1, x2],
                               targets))
    torch.testing.assert_close(class_loss, expected, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------ BYOL's encoder schedule
def scheduler_lrs(scheduler, steps):
    lrs = []
    for _ in range(steps):
        lrs.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.optimizer.step()
        scheduler.step()
    return lrs


@pytest.mark.parametrize("config,overrides,offset", [
    ("cpu_byol_adios", ("~method_kwargs.train_mask_epoch",), 10),  # the momentum default
    ("cpu_byol_adios", (), 0),                                      # the CPU config turns it off
    ("cpu_simclr_adios", (), 0),
    ("cpu_simclr_adios", ("+method_kwargs.train_mask_epoch=5",), 5),
])
@pytest.mark.parametrize("interval", ["epoch", "step"])
def test_encoder_schedule_ends_train_mask_epoch_before_the_masker_schedule(
        images, config, overrides, offset, interval):
    """The official configure_optimizers: encoder warm-up + cosine over ``max_epochs -
    train_mask_epoch`` (10 for BYOL-ADIOS, 0 otherwise), masker over ``max_epochs``; per
    epoch or per batch, the learning rates equal those of schedulers built that way."""
    epochs, warmup, per_epoch = 40, 10, 3
    model, cfg = build(images, config, *overrides, f"max_epochs={epochs}",
                       f"scheduler.warmup_epochs={warmup}", f"++scheduler.interval={interval}",
                       "++scheduler.warmup_start_lr=0.003")
    from solo.utils.lr_scheduler import LinearWarmupCosineAnnealingLR
    assert model.train_mask_epoch == offset
    unit = per_epoch if interval == "step" else 1
    model._trainer = SimpleNamespace(estimated_stepping_batches=epochs * per_epoch)
    try:
        (encoder_opt, masker_opt), (encoder, masker) = model.configure_optimizers()
    finally:
        model._trainer = None
    for name, schedule, opt, length in [("encoder", encoder, encoder_opt, epochs - offset),
                                        ("masker", masker, masker_opt, epochs)]:
        base_lr = opt.param_groups[0]["initial_lr"]
        reference = LinearWarmupCosineAnnealingLR(
            torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base_lr),
            warmup_epochs=warmup * unit, max_epochs=length * unit, warmup_start_lr=0.003,
            eta_min=0.0)
        got, want = scheduler_lrs(schedule["scheduler"], epochs * unit), scheduler_lrs(
            reference, epochs * unit)
        assert got == pytest.approx(want, rel=1e-12, abs=1e-15), name


def test_train_mask_epoch_without_a_cosine_phase_leaves_the_schedule_whole(images):
    """max_epochs - train_mask_epoch <= warmup_epochs (the official code would divide by zero
    or run the cosine backwards, e.g. a 1-epoch test of a BYOL config): full length, a warning."""
    model, _ = build(images, "cpu_byol_adios", "~method_kwargs.train_mask_epoch", "max_epochs=11",
                     "scheduler.warmup_epochs=1", "++scheduler.interval=epoch")
    with pytest.warns(UserWarning, match="train_mask_epoch=10 leaves no cosine phase"):
        _, (encoder, masker) = model.configure_optimizers()
    assert encoder["scheduler"].max_epochs == masker["scheduler"].max_epochs == 11


# ------------------------------------------------------------------ SimSiam defaults
def test_simsiam_defaults_are_the_official_command_line_defaults(images):
    """simsiam_adios without the keys: both views masked, pairs masked + none + both
    (use_symmetry/no/both_mask true), a 4-block UNet whatever the crop size (``--num_blocks 4``).
    ``unet_blocks: auto`` takes the depth from the crop size (64 px: 5)."""
    model, cfg = build(images, "cpu_simsiam_adios", "~method_kwargs.masked_views",
                       "~method_kwargs.pairs")
    kw = cfg.method_kwargs
    assert (kw.masked_views, list(kw.pairs)) == ("both", ["masked", "none", "both"])
    assert kw.unet_blocks == 4
    assert model.masked_views == "both" and len(model.masker.unet.down) == 4
    auto, _ = build(images, "cpu_simsiam_adios", "+method_kwargs.unet_blocks=auto")
    assert len(auto.masker.unet.down) == 5
    _, cfg = build(images, "cpu_simsiam_adios", "~method_kwargs.pairs",
                   "method_kwargs.masked_views=second")
    assert list(cfg.method_kwargs.pairs) == ["masked", "none"]  # no masked-masked pair on one view
    _, cfg = build(images, "cpu_simclr_adios")  # other methods keep the generic defaults
    assert (cfg.method_kwargs.masked_views, list(cfg.method_kwargs.pairs)) == ("second", ["masked"])


# ------------------------------------------------------------------ ADIOS-s, both views masked
def soft_masks(b, n, size, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(3 * torch.randn(b, n, size, size, generator=g, dtype=torch.float64), 1)


@pytest.mark.parametrize("choice", ["shared", "per_view"])
def test_adios_s_hides_both_views_with_the_same_mask_index(choice):
    """The official SimSiam-ADIOS-s draws ``chosen_mask = torch.randint(0, N, (B,))`` once and
    hides ``x_orig[i]`` with ``masks_orig[i, c_i]`` and ``x_transformed[i]`` with
    ``masks_transformed[i, c_i]``; ``per_view`` draws once per view."""
    b, n, s = 16, 4, 8
    views = [torch.rand(b, 3, s, s, dtype=torch.float64) + 0.5 for _ in range(2)]
    masks = [soft_masks(b, n, s, 1), soft_masks(b, n, s, 2)]
    seen = {}

    def pair_loss(a, c):
        seen.setdefault("pairs", []).append((a, c))
        return (a * c).mean()

    torch.manual_seed(3)
    adios_ssl_loss(lambda x: x, pair_loss, views, masks, [], pairs=("masked",), single_mask=True,
                   single_mask_choice=choice)
    (plain1, masked2), (masked1, plain2) = seen["pairs"]
    torch.manual_seed(3)
    first = torch.randint(0, n, (b,))
    second = first if choice == "shared" else torch.randint(0, n, (b,))
    rows = torch.arange(b)
    torch.testing.assert_close(masked1, views[0] * (1 - masks[0][rows, first].unsqueeze(1)))
    torch.testing.assert_close(masked2, views[1] * (1 - masks[1][rows, second].unsqueeze(1)))
    assert torch.equal(plain1, views[0]) and torch.equal(plain2, views[1])


@pytest.mark.parametrize("choice", ["shared", "per_view"])
def test_simsiam_adios_s_passes_its_mask_choice_to_the_loss(images, monkeypatch, choice):
    overrides = ["+method_kwargs.single_mask=true", "method_kwargs.N=2"]
    if choice != "shared":  # shared is the default
        overrides.append(f"+method_kwargs.single_mask_choice={choice}")
    torch.manual_seed(0)
    model, _ = build(images, "cpu_simsiam_adios", *overrides)
    import adios_ssl.sololearn.mixin as mixin  # importable once build registered solo-learn
    model._adios_mute = True
    received = []
    real = mixin.adios_ssl_loss
    monkeypatch.setattr(mixin, "adios_ssl_loss", lambda *a, **kw: received.append(
        kw.get("single_mask_choice")) or real(*a, **kw))
    x1, x2 = torch.randn(2, 4, 3, SIZE, SIZE)
    with torch.no_grad():
        model._ssl_loss([torch.arange(4), [x1, x2], torch.arange(4)], model._masks(x1, x2), False)
    assert received == [choice]


class _Masker(torch.nn.Module):
    """Two views' masks from a small masking network (the masker step's only parameters)."""

    def __init__(self):
        super().__init__()
        self.net = MaskingNetwork(32, num_masks=3, fbase=8).double()

    def forward(self, views):
        return [self.net(v) for v in views]


@pytest.mark.parametrize("per_view", [True, False])
def test_entropy_term_per_view_or_over_all_masks(per_view):
    """The official SimSiam-ADIOS-s adds ``alpha_entropy * Entropy(fractions)`` once per view
    (each view's (B, N) fractions with its own softmax); the full ADIOS stacks all masks' fractions
    (one softmax over 2N). The masker step's objective, written out with the official formula."""
    torch.manual_seed(0)
    masker = _Masker()
    views = [torch.randn(4, 3, 32, 32, dtype=torch.float64) for _ in range(2)]
    opt = torch.optim.SGD(masker.parameters(), lr=0.0)
    ssl = torch.tensor(0.25, dtype=torch.float64)
    out = masker_update(lambda: masker(views), lambda masks, grad: (ssl, ssl), opt, [],
                        alpha_sparsity=0.3, alpha_entropy=0.7, entropy_per_view=per_view)
    with torch.no_grad():
        m1, m2 = masker(views)

    def official_entropy(m):  # src/utils/metrics.py Entropy on mask.sum([-1, -2]) / img_size**2
        frac = m.sum([-1, -2]) / 32 ** 2
        return (F.softmax(frac, dim=1) * F.log_softmax(frac, dim=1)).sum()

    entropy = (official_entropy(m1) + official_entropy(m2) if per_view
               else official_entropy(torch.cat([m1, m2], 1)))
    expected = ssl - 0.3 * sparsity_penalty(torch.cat([m1, m2], 1)) + 0.7 * entropy
    torch.testing.assert_close(out.objective, expected, rtol=1e-12, atol=1e-12)
    other = (fraction_neg_entropy(torch.cat([m1, m2], 1)) if per_view
             else fraction_neg_entropy(m1) + fraction_neg_entropy(m2))
    assert abs(float(entropy - other)) > 1e-6  # the two definitions differ on these masks


@pytest.mark.parametrize("overrides,per_view", [
    (("+method_kwargs.single_mask=true",), True),
    (("+method_kwargs.single_mask=true", "+method_kwargs.single_mask_entropy=joint"), False),
    ((), False),  # full ADIOS: one softmax over all masks, as the official full SimSiam-ADIOS
])
def test_simsiam_adios_s_asks_for_the_per_view_entropy(images, overrides, per_view):
    model, _ = build(images, "cpu_simsiam_adios", "method_kwargs.N=2", *overrides)
    assert model._adios_step_options()["entropy_per_view"] is per_view


# ------------------------------------------------------------------ config checks
@pytest.mark.parametrize("key,value", [
    ("classifier_views", "second"), ("single_mask_choice", "random"),
    ("single_mask_entropy", "sum"), ("train_mask_epoch", -1), ("train_mask_epoch", 2.5),
    ("unet_blocks", 3), ("unet_blocks", "deep"),
])
def test_bad_values_of_the_new_keys_stop_with_an_error_naming_them(images, key, value):
    from adios_ssl.sololearn.config import ADIOSConfigError

    with pytest.raises(ADIOSConfigError, match=f"method_kwargs.{key}="):
        build(images, "cpu_simclr_adios", f"+method_kwargs.{key}={value}")
