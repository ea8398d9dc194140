"""ADIOS core (masker, objective, baselines) against the paper / official code and plain references.

Everything runs on tiny images and models: the masker at 32 px with ``fbase=8`` and an encoder of
one conv layer. Exactness checks (batched vs looped encoding) run in float64.
"""
import copy
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from adios_ssl.baselines import beit_block_masks, mae_patch_masks, random_pixel_masks
from adios_ssl.masker import MaskingNetwork, unet_depth
from adios_ssl.objective import (
    SPARSITY_EPS,
    adios_ssl_loss,
    apply_masks,
    apply_one_mask_per_image,
    encode_views,
    fraction_neg_entropy,
    masker_objective,
    per_view_batch_norm,
    sparsity_penalty,
)


def random_masks(b, n, size, seed=0, dtype=torch.float32):
    """Soft masks (B, N, S, S) that sum to 1 per pixel and differ from one another."""
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(3 * torch.randn(b, n, size, size, generator=g, dtype=dtype), dim=1)


def num_params(module):
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------- masker
@pytest.mark.parametrize("size,depth", [(32, 4), (64, 5), (96, 5), (128, 6)])
@pytest.mark.parametrize("norm", ["gn", "in", "none"])
def test_masker_outputs_a_soft_partition(size, depth, norm):
    """(B, N, S, S) non-negative masks that sum to 1 over the N masks at every pixel."""
    assert unet_depth(size) == depth == int(math.log2(size) - 1)
    torch.manual_seed(0)
    masker = MaskingNetwork(size, num_masks=3, fbase=8, norm=norm)
    assert len(masker.unet.down) == len(masker.unet.up) == depth
    with torch.no_grad():
        masks = masker(torch.randn(2, 3, size, size))
    assert masks.shape == (2, 3, size, size)
    assert masks.min() >= 0
    assert torch.allclose(masks.sum(1), torch.ones(2, size, size), atol=1e-6)
    # the masks are a function of the image: two different images get different masks
    assert not torch.allclose(masks[0], masks[1], atol=1e-4)


@pytest.mark.parametrize("size,fbase,millions", [(96, 32, 0.93), (96, 64, 2.50), (224, 32, 1.17)])
def test_masker_parameter_count_matches_official_network(size, fbase, millions):
    """Parameter counts of the official UNet + 1x1 head with N = 6 masks."""
    assert round(num_params(MaskingNetwork(size, num_masks=6, fbase=fbase)) / 1e6, 2) == millions


def test_masker_rejects_bad_configurations():
    with pytest.raises(ValueError, match="multiple of 8"):
        MaskingNetwork(32, 4, fbase=12, norm="gn")
    MaskingNetwork(32, 4, fbase=12, norm="in")  # only GroupNorm(8) needs multiples of 8
    with pytest.raises(ValueError, match="num_masks"):
        MaskingNetwork(32, 0, fbase=8)
    for tiny in (8, 16):  # 8 px: below the minimum; 16 px: depth 3 is not a supported plan
        with pytest.raises(ValueError):
            MaskingNetwork(tiny, 4, fbase=8)
    with pytest.raises(ValueError, match="not divisible"):
        MaskingNetwork(36, 4, fbase=8)  # depth 4 needs multiples of 8
    with pytest.raises(ValueError, match="norm"):
        MaskingNetwork(32, 4, fbase=8, norm="bn")
    masker = MaskingNetwork(32, 4, fbase=8)
    with pytest.raises(ValueError, match=r"32x32.*\(64, 64\)"):
        masker(torch.randn(1, 3, 64, 64))


# ---------------------------------------------------------------- applying masks
def test_apply_masks_is_mask_major_and_exact():
    b, n, c, s = 3, 4, 2, 5
    x = torch.randn(b, c, s, s)
    masks = random_masks(b, n, s)
    out = apply_masks(x, masks)
    assert out.shape == (n * b, c, s, s)
    for k in range(n):
        assert torch.equal(out[k * b:(k + 1) * b], x * (1 - masks[:, k:k + 1]))


def test_apply_one_mask_per_image_picks_one_mask_uniformly():
    b, n, s = 600, 6, 4
    x = torch.rand(b, 2, s, s) + 0.5
    masks = random_masks(b, n, s, seed=1)
    out = apply_one_mask_per_image(x, masks, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    candidates = x.unsqueeze(1) * (1 - masks.unsqueeze(2))  # (B, N, C, S, S)
    matches = (candidates == out.unsqueeze(1)).flatten(2).all(-1)  # (B, N)
    assert matches.sum(1).tolist() == [1] * b  # exactly one of the N candidates, per image
    counts = np.bincount(matches.float().argmax(1).numpy(), minlength=n)
    expected = b / n
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert counts.min() > 0 and chi2 < 30, counts  # chi2(5 dof) > 30 has p < 2e-5
    # the draw follows the generator
    again = apply_one_mask_per_image(x, masks, generator=torch.Generator().manual_seed(0))
    other = apply_one_mask_per_image(x, masks, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, again) and not torch.equal(out, other)


@pytest.mark.parametrize("fn", [apply_masks, apply_one_mask_per_image])
def test_apply_masks_shape_errors(fn):
    x, masks = torch.randn(2, 3, 8, 8), random_masks(2, 4, 8)
    for bad_x, bad_m in [(x[0], masks), (x, masks[0]), (x[:1], masks),
                         (x, masks[..., :4]), (x, masks[..., :4, :])]:
        with pytest.raises(ValueError):
            fn(bad_x, bad_m)


# ---------------------------------------------------------------- sparsity and entropy terms
def stripe_masks(b, n, size):
    """N vertical stripes of equal width, a hard partition: each mask covers exactly 1/N."""
    masks = torch.zeros(b, n, size, size)
    width = size // n
    for k in range(n):
        masks[:, k, :, k * width:(k + 1) * width] = 1
    return masks


def numpy_penalty(masks):
    m = masks.detach().double().numpy()
    frac = m.sum(axis=(2, 3)) / (m.shape[-1] * m.shape[-2])  # (B, N)
    per_sample = 1 / (np.sin(np.pi * frac) + 1e-10)
    return per_sample.mean(0).sum()


def test_sparsity_penalty_known_coverages():
    # each of N = 2 masks covers exactly half the image: 1/sin(pi/2) = 1 per mask
    assert sparsity_penalty(stripe_masks(3, 2, 12)).item() == pytest.approx(2, abs=1e-5)
    # N = 4 masks, each half of the image (overlapping: the penalty sees each mask on its own)
    half = torch.zeros(2, 4, 8, 8)
    half[:, :, :4] = 1
    assert sparsity_penalty(half).item() == pytest.approx(4, abs=1e-5)
    # N = 6 stripes, each covering 1/6: 1/sin(pi/6) = 2 per mask
    assert sparsity_penalty(stripe_masks(2, 6, 12)).item() == pytest.approx(12, abs=1e-5)
    # the batch is averaged: coverage 1/2 for one image and 1/6 for the other -> (1 + 2) / 2
    mixed = torch.cat([stripe_masks(1, 2, 12)[:, :1], stripe_masks(1, 6, 12)[:, :1]])
    assert sparsity_penalty(mixed).item() == pytest.approx(1.5, abs=1e-5)


def test_sparsity_penalty_matches_numpy_reference():
    masks = torch.rand(5, 3, 7, 7) ** 2
    assert sparsity_penalty(masks).item() == pytest.approx(numpy_penalty(masks), rel=1e-5)
    soft = random_masks(4, 6, 9, seed=3)
    assert sparsity_penalty(soft).item() == pytest.approx(numpy_penalty(soft), rel=1e-5)


def test_sparsity_gradient_pushes_coverage_towards_half():
    """d/dm of 1/sin(pi f) with f = mean(m): -pi cos(pi f) / sin(pi f)^2 / (H W B)."""
    b, s = 2, 6
    for f, sign in ((0.1, -1), (0.8, 1)):
        masks = torch.full((b, 1, s, s), f, dtype=torch.float64, requires_grad=True)
        sparsity_penalty(masks).backward()
        expected = -math.pi * math.cos(math.pi * f) / math.sin(math.pi * f) ** 2 / (s * s * b)
        assert torch.allclose(masks.grad, torch.full_like(masks, expected), rtol=1e-8)
        assert np.sign(expected) == sign
    small = torch.full((b, 1, s, s), 0.1)
    assert sparsity_penalty(small + 0.05) < sparsity_penalty(small)  # more coverage, less penalty


def test_fraction_neg_entropy_matches_numpy():
    masks = random_masks(4, 5, 6, seed=2) ** 0.5
    frac = masks.double().numpy().mean(axis=(2, 3))
    p = np.exp(frac) / np.exp(frac).sum(1, keepdims=True)
    expected = (p * np.log(p)).sum()
    assert fraction_neg_entropy(masks).item() == pytest.approx(expected, rel=1e-5)
    # equal fractions: maximal entropy, sum_b -log N
    assert fraction_neg_entropy(stripe_masks(3, 4, 8)).item() == pytest.approx(-3 * math.log(4), rel=1e-6)


def test_masker_objective_composition():
    masks = random_masks(3, 4, 6, seed=5)
    ssl = torch.tensor(2.5)
    pen, negent = numpy_penalty(masks), fraction_neg_entropy(masks).item()
    assert masker_objective(ssl, masks, 0.1).item() == pytest.approx(2.5 - 0.1 * pen, rel=1e-6)
    assert masker_objective(ssl, masks, 0.1, alpha_entropy=0.3).item() == pytest.approx(
        2.5 - 0.1 * pen + 0.3 * negent, rel=1e-6)


# ---------------------------------------------------------------- mixed precision
def extreme_masks(dtype=torch.float32):
    """(2, 3, 16, 16) soft masks summing to 1 per pixel, coverages near 0 and near 1:
    image 0 (1e-6, 0.5, 0.5 - 1e-6), image 1 (0.99, 0.005, 0.005); representable in float16
    and bfloat16 (to within their rounding)."""
    masks = torch.empty(2, 3, 16, 16, dtype=torch.float64)
    for b, fractions in enumerate(((1e-6, 0.5, 0.5 - 1e-6), (0.99, 0.005, 0.005))):
        for k, f in enumerate(fractions):
            masks[b, k] = f
    return masks.to(dtype)


def sparsity_terms(masks, ssl):
    return (sparsity_penalty(masks), fraction_neg_entropy(masks),
            masker_objective(ssl, masks, 0.7, alpha_entropy=0.3))


HALF = [torch.bfloat16, torch.float16]


@pytest.mark.parametrize("autocast_dtype", HALF)
def test_sparsity_terms_under_autocast_equal_float32(autocast_dtype):
    """Under CPU autocast (bf16, fp16) the penalty, the entropy term and the masker objective
    (with an SSL loss in the autocast dtype) equal their float32 values, gradients included,
    and stay finite for coverages of 1e-6 and 0.99."""
    results = []
    for autocast in (False, True):
        masks = extreme_masks().requires_grad_(True)
        ssl = torch.tensor(2.5, dtype=autocast_dtype if autocast else torch.float32)
        with torch.autocast("cpu", dtype=autocast_dtype, enabled=autocast):
            terms = sparsity_terms(masks, ssl)
        (grad,) = torch.autograd.grad(sum(terms), masks)
        results.append((terms, grad))
    (ref, ref_grad), (out, grad) = results
    for r, o in zip(ref, out):
        assert o.dtype == torch.float32 and torch.isfinite(o)
        assert torch.equal(o, r)
    assert torch.equal(grad, ref_grad) and torch.isfinite(grad).all()
    # the 1e-6 coverage: 1 / sin(pi * 1e-6) = 3.2e5, halved by the batch mean: above float16's
    # largest value (65504)
    assert ref[0] > 1.5e5


@pytest.mark.parametrize("dtype", HALF)
def test_sparsity_terms_of_half_precision_masks_are_computed_in_float32(dtype):
    """Masks that arrive in bfloat16/float16 are promoted to float32 first: the values are those
    of the float32 copy of the masks, finite, where the same formula evaluated in the half type
    overflows (float16) or is off by more than 1e-3 (bfloat16)."""
    masks = extreme_masks(dtype)
    ssl = torch.tensor(2.5, dtype=dtype)
    for out, ref in zip(sparsity_terms(masks, ssl), sparsity_terms(masks.float(), ssl.float())):
        assert out.dtype == torch.float32 and torch.isfinite(out)
        assert torch.equal(out, ref)
    frac = masks.mean(dim=(-1, -2))  # the formula in the half type
    naive = (1.0 / (torch.sin(frac * math.pi) + SPARSITY_EPS)).mean(0).sum()
    reference = sparsity_penalty(masks)
    assert not torch.isfinite(naive) or abs(naive.double() - reference.double()) > 1e-3 * reference
    if dtype == torch.float16:
        assert not torch.isfinite(naive)


@pytest.mark.parametrize("autocast_dtype", HALF)
def test_masker_gives_float32_masks_under_autocast(autocast_dtype):
    torch.manual_seed(0)
    masker = MaskingNetwork(32, num_masks=3, fbase=8)
    with torch.autocast("cpu", dtype=autocast_dtype):
        masks = masker(torch.randn(2, 3, 32, 32))
    assert masks.dtype == torch.float32
    assert torch.allclose(masks.sum(1), torch.ones(2, 32, 32), atol=1e-6)


# ---------------------------------------------------------------- per-view BatchNorm
def bn_net(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 6),
        nn.BatchNorm1d(6, momentum=None),  # cumulative average: depends on num_batches_tracked
        nn.Linear(6, 5), nn.BatchNorm1d(5))
    net[-1].eval()  # an eval-mode layer: must keep using (and keeping) its running statistics
    net[-1].running_mean.normal_()
    net[-1].running_var.uniform_(0.5, 2)
    return net


def test_per_view_batch_norm_equals_sequential_forwards():
    n, b = 3, 4
    views = [torch.randn(b, 3, 6, 6) * (1 + k) + 2 * k for k in range(n)]  # different statistics
    net = bn_net()
    ref = copy.deepcopy(net)
    frozen = net[-1].running_mean.clone(), net[-1].running_var.clone()

    with per_view_batch_norm([net], n):
        out = net(torch.cat(views))
    expected = torch.cat([ref(v) for v in views])
    assert torch.allclose(out, expected, atol=1e-6)
    # gradients agree too
    w = torch.randn_like(out)
    grads = torch.autograd.grad((out * w).sum(), list(net.parameters()))
    ref_grads = torch.autograd.grad((expected * w).sum(), list(ref.parameters()))
    for g, r in zip(grads, ref_grads):
        assert torch.allclose(g, r, atol=1e-5)
    # running statistics after one batched pass == after N sequential passes
    for name, buf in net.named_buffers():
        assert torch.allclose(buf.float(), dict(ref.named_buffers())[name].float(), atol=1e-6), name
    assert net[1].num_batches_tracked.item() == n
    assert torch.equal(net[-1].running_mean, frozen[0]) and torch.equal(net[-1].running_var, frozen[1])
    # the patch is gone: the whole-batch forward mixes the views' statistics again
    for layer in net.modules():
        assert "forward" not in vars(layer)
    assert not torch.allclose(net(torch.cat(views)), expected, atol=1e-3)


def test_per_view_batch_norm_unpatches_after_an_exception():
    net = bn_net()
    with pytest.raises(RuntimeError, match="boom"):
        with per_view_batch_norm([net, net], 2):  # a module listed twice is patched once
            assert "forward" in vars(net[1])
            raise RuntimeError("boom")
    assert all("forward" not in vars(layer) for layer in net.modules())


def test_per_view_batch_norm_patches_sync_batch_norm_layers():
    """Lightning's sync_batchnorm turns every BatchNorm into torch.nn.SyncBatchNorm before
    training: per_view_batch_norm patches those too, one SyncBatchNorm call per view (under DDP
    each call gathers its statistics over all processes, so each view is normalised over that
    view's samples on every process; torch runs SyncBatchNorm on GPUs only, see
    tests/test_adios_ddp.py). In one process SyncBatchNorm computes plain batch statistics, so
    the batched forward equals the sequential one."""
    n, b = 3, 4
    views = [torch.randn(b, 3, 6, 6) * (1 + k) + 2 * k for k in range(n)]
    net = nn.SyncBatchNorm.convert_sync_batchnorm(bn_net())
    ref = copy.deepcopy(net)
    sync_layers = [m for m in net.modules() if isinstance(m, nn.SyncBatchNorm)]
    assert len(sync_layers) == 3
    with per_view_batch_norm([net], n):
        assert all("forward" in vars(m) for m in sync_layers)
        out = net(torch.cat(views))
    expected = torch.cat([ref(v) for v in views])
    assert torch.allclose(out, expected, atol=1e-6)
    assert sync_layers[0].num_batches_tracked.item() == n


def test_encode_views_batched_matches_sequential_including_running_stats():
    views = [torch.randn(4, 3, 6, 6) + k for k in range(4)]
    net = bn_net(seed=1)
    ref = copy.deepcopy(net)
    batched = encode_views(net, views, [net], batched=True)
    looped = encode_views(ref, views, [ref], batched=False)
    for a, r in zip(batched, looped):
        assert torch.allclose(a, r, atol=1e-6)
    for (name, buf), (_, rbuf) in zip(net.named_buffers(), ref.named_buffers()):
        assert torch.allclose(buf.float(), rbuf.float(), atol=1e-6), name


# ---------------------------------------------------------------- batched vs looped ADIOS loss
B, N, SIZE = 8, 4, 32


class Encoder(nn.Module):
    """conv + BN + ReLU + pool + linear backbone and a BatchNorm1d projector; dict outputs."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.AvgPool2d(8), nn.Flatten(), nn.Linear(128, 16))
        self.projector = nn.Sequential(nn.Linear(16, 16), nn.BatchNorm1d(16), nn.ReLU(),
                                       nn.Linear(16, 8))

    def forward(self, x):
        feats = self.backbone(x)
        return {"feats": feats, "z": self.projector(feats)}


def nt_xent(a, b, temperature=0.1):
    """SimCLR loss of one pair of views: 2B samples, positives are the other view's copy."""
    z = F.normalize(torch.cat([a["z"], b["z"]]), dim=1)
    n = a["z"].shape[0]
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
    labels = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    return F.cross_entropy(sim, labels)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    encoder = Encoder().double()
    masker = MaskingNetwork(SIZE, N, fbase=8).double()
    g = torch.Generator().manual_seed(1)
    x1 = torch.randn(B, 3, SIZE, SIZE, generator=g, dtype=torch.float64)
    x2 = 0.8 * x1 + 0.6 * torch.randn(B, 3, SIZE, SIZE, generator=g, dtype=torch.float64)
    return encoder, masker, (x1, x2)


def run_loss(encoder, masker, views, masked_views, seed=None, **kwargs):
    """Loss, per-mask losses, encoder grads and masker grads on fresh copies of the models."""
    enc, msk = copy.deepcopy(encoder), copy.deepcopy(masker)
    masks = [msk(v) if i in masked_views else None for i, v in enumerate(views)]
    if seed is not None:
        torch.manual_seed(seed)
    total, per_mask = adios_ssl_loss(enc, nt_xent, views, masks, [enc], **kwargs)
    total.backward()
    def grads(m):
        return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in m.parameters()]
    return total.detach(), [p.detach() for p in per_mask], grads(enc), grads(msk), masks


def reference_loss(encoder, views, masks, pairs):
    """The ADIOS SSL loss written plainly: every pair re-encodes both its views."""
    x = {(i, False): v for i, v in enumerate(views)}
    num_masks = next(m for m in masks if m is not None).shape[1]
    per_mask = []
    for k in range(num_masks):
        for i, m in enumerate(masks):
            if m is not None:
                x[(i, True)] = views[i] * (1 - m[:, k:k + 1])
        chosen = []
        if "masked" in pairs:
            chosen += [((0, False), (1, True))] if masks[1] is not None else []
            chosen += [((0, True), (1, False))] if masks[0] is not None else []
        chosen += [((0, False), (1, False))] if "none" in pairs else []
        chosen += [((0, True), (1, True))] if "both" in pairs else []
        terms = [nt_xent(encoder(x[a]), encoder(x[b])) for a, b in chosen]
        per_mask.append(sum(terms) / len(terms))
    return per_mask


def assert_close_lists(a, b, rtol=1e-9, atol=1e-12):
    assert len(a) == len(b)
    for u, v in zip(a, b):
        assert torch.allclose(u, v, rtol=rtol, atol=atol), (u - v).abs().max()


@pytest.mark.parametrize("masked_views,pairs", [({1}, ("masked",)),
                                                ({0, 1}, ("masked", "none", "both"))])
def test_batched_loss_equals_looped_loss_and_gradients(setup, masked_views, pairs):
    encoder, masker, views = setup
    batched = run_loss(encoder, masker, views, masked_views, pairs=pairs, batched=True)
    looped = run_loss(encoder, masker, views, masked_views, pairs=pairs, batched=False)
    assert torch.allclose(batched[0], looped[0], rtol=1e-10)
    assert_close_lists(batched[1], looped[1])
    assert_close_lists(batched[2], looped[2])  # encoder gradients
    assert_close_lists(batched[3], looped[3])  # masker gradients
    assert any(g.abs().max() > 0 for g in batched[3])
    # both equal the plain reference, and the total is the sum over the N masks
    with torch.no_grad():
        ref = reference_loss(copy.deepcopy(encoder), views, batched[4], pairs)
    assert_close_lists(batched[1], [r.detach() for r in ref])
    assert batched[0].item() == pytest.approx(sum(r.item() for r in ref), rel=1e-10)


def test_batched_loss_needs_per_view_batch_norm(setup):
    """Sanity check of the setup: without per-view statistics (no modules handed over) the
    batched loss is different, so the equality above is not automatic."""
    encoder, masker, views = setup
    with torch.no_grad():
        masks = [None, masker(views[1])]
        mixed, _ = adios_ssl_loss(copy.deepcopy(encoder), nt_xent, views, masks, [], batched=True)
        looped, _ = adios_ssl_loss(copy.deepcopy(encoder), nt_xent, views, masks, [], batched=False)
    assert abs(mixed.item() - looped.item()) > 1e-4


@pytest.mark.parametrize("masked_views", [{1}, {0, 1}])
def test_single_mask_batched_equals_looped(setup, masked_views):
    encoder, masker, views = setup
    pairs = ("masked", "both") if len(masked_views) == 2 else ("masked",)
    batched = run_loss(encoder, masker, views, masked_views, seed=7, pairs=pairs,
                       single_mask=True, batched=True)
    looped = run_loss(encoder, masker, views, masked_views, seed=7, pairs=pairs,
                      single_mask=True, batched=False)
    assert len(batched[1]) == 1
    assert torch.allclose(batched[0], looped[0], rtol=1e-10)
    for i in (2, 3):
        assert_close_lists(batched[i], looped[i])
    # the one masked view per input is apply_one_mask_per_image under the same seed, with one
    # mask index per image shared by both views (the official SimSiam-ADIOS-s draws it once)
    masks = batched[4]
    torch.manual_seed(7)
    choice = torch.randint(N, (B,))
    hidden = {i: apply_one_mask_per_image(views[i], masks[i].detach(), choice=choice)
              for i in sorted(masked_views)}
    enc = copy.deepcopy(encoder)
    with torch.no_grad():
        x = {(i, False): v for i, v in enumerate(views)}
        x.update({(i, True): h for i, h in hidden.items()})
        terms = [nt_xent(enc(x[(0, False)]), enc(x[(1, True)]))]
        if 0 in masked_views:
            terms += [nt_xent(enc(x[(0, True)]), enc(x[(1, False)])),
                      nt_xent(enc(x[(0, True)]), enc(x[(1, True)]))]
    assert batched[0].item() == pytest.approx(sum(t.item() for t in terms) / len(terms), rel=1e-10)


def test_masker_gradients_without_grad_through_views(setup):
    """The masker step may skip gradients of the unmasked views: same masker gradients."""
    encoder, masker, views = setup
    full = run_loss(encoder, masker, views, {1}, batched=True)
    lean = run_loss(encoder, masker, views, {1}, batched=True, grad_through_views=False)
    assert torch.allclose(full[0], lean[0], rtol=1e-12)
    assert_close_lists(full[3], lean[3])


# ---------------------------------------------------------------- adversarial directions
def flat_grad(loss, params):
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])


def ssl_loss(encoder, masks, views):
    """The SSL loss with train-mode BatchNorm: outputs use batch statistics, so the value is a
    deterministic function of (encoder weights, masks); running statistics do not enter it."""
    return adios_ssl_loss(encoder, nt_xent, views, [None, masks], [encoder])[0]


def test_masker_step_increases_ssl_loss(setup):
    encoder, masker, views = setup
    enc, msk = copy.deepcopy(encoder), copy.deepcopy(masker)
    for p in enc.parameters():
        p.requires_grad_(False)
    params = list(msk.parameters())
    masks = msk(views[1])
    before = ssl_loss(enc, masks, views)
    g_ssl = flat_grad(before, params)
    masks = msk(views[1])
    objective = masker_objective(ssl_loss(enc, masks, views), masks, alpha_sparsity=0.01)
    g_obj = flat_grad(objective, params)
    lr = 1e-2 / g_obj.norm().item()  # a step of length 1e-2 in parameter space
    opt = torch.optim.SGD(params, lr=lr)
    opt.zero_grad()
    masks = msk(views[1])
    (-masker_objective(ssl_loss(enc, masks, views), masks, alpha_sparsity=0.01)).backward()
    opt.step()
    with torch.no_grad():
        after = ssl_loss(enc, msk(views[1]), views)
    predicted = lr * g_ssl.dot(g_obj).item()  # first-order change of the SSL loss
    assert predicted > 0
    assert after.item() > before.item()
    assert after.item() - before.item() == pytest.approx(predicted, rel=0.2)


def test_encoder_step_decreases_ssl_loss(setup):
    encoder, masker, views = setup
    enc = copy.deepcopy(encoder)
    with torch.no_grad():
        masks = masker(views[1])  # detached: the encoder step does not move the masker
    params = list(enc.parameters())
    before = ssl_loss(enc, masks, views)
    g = flat_grad(before, params)
    lr = 1e-3 / g.norm().item()  # a step of length 1e-3 in parameter space
    opt = torch.optim.SGD(params, lr=lr)
    opt.zero_grad()
    ssl_loss(enc, masks, views).backward()
    opt.step()
    with torch.no_grad():
        after = ssl_loss(enc, masks, views)
    predicted = -lr * g.dot(g).item()
    assert after.item() < before.item()
    assert after.item() - before.item() == pytest.approx(predicted, rel=0.2)


# ---------------------------------------------------------------- baselines
def test_random_pixel_masks_fraction():
    g = torch.Generator().manual_seed(0)
    for ratio in (0.2, 0.5, 0.8):
        masks = random_pixel_masks(4, 64, ratio, generator=g)
        assert masks.shape == (4, 1, 64, 64)
        assert set(masks.unique().tolist()) <= {0.0, 1.0}
        assert masks.mean().item() == pytest.approx(ratio, abs=0.02)  # std ~ 0.004


@pytest.mark.parametrize("size,patch,ratio", [(64, 16, 0.75), (32, 8, 0.7), (40, 16, 0.5)])
def test_mae_patch_masks(size, patch, ratio):
    b = 5
    masks = mae_patch_masks(b, size, ratio, patch, generator=torch.Generator().manual_seed(0))
    assert masks.shape == (b, 1, size, size)
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    per_side = size // patch
    covered = per_side * patch
    grid = masks[:, 0, :covered, :covered].reshape(b, per_side, patch, per_side, patch)
    assert torch.equal(grid.amin(dim=(2, 4)), grid.amax(dim=(2, 4)))  # constant on each patch
    visible = (grid.amax(dim=(2, 4)) == 0).sum(dim=(1, 2))  # 16 * 0.3 = 4.8 -> 4 for ratio 0.7
    assert visible.tolist() == [int(per_side ** 2 * (1 - ratio))] * b
    border = torch.ones(size, size, dtype=torch.bool)
    border[:covered, :covered] = False
    assert (masks[:, 0, border] == 1).all()  # pixels outside the patch grid stay hidden
    # different images get different patches
    assert len({tuple(m.flatten().tolist()) for m in grid.amax(dim=(2, 4))}) > 1


def test_beit_block_masks_coverage():
    size, ratio, min_pixels = 32, 0.3, 16
    masks = beit_block_masks(6, size, ratio, min_pixels, generator=torch.Generator().manual_seed(0))
    assert masks.shape == (6, 1, size, size)
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    coverage = masks.mean(dim=(1, 2, 3))
    assert (coverage >= ratio).all()
    # the last block is at most max(min_pixels, remaining budget) plus rounding of its sides
    assert (coverage * size * size <= ratio * size * size + min_pixels + size + 1).all(), coverage


@pytest.mark.parametrize("fn", [random_pixel_masks, mae_patch_masks, beit_block_masks])
def test_baselines_reject_invalid_ratio(fn):
    for ratio in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="ratio"):
            fn(2, 32, ratio)


# ------------------------------------------------------------------ SimSiam's directional terms
def neg_cos(p, z):
    return -F.cosine_similarity(p, z.detach(), dim=-1).mean()


def simsiam_pair(a, b):
    """SimSiam's symmetric loss of one pair: the mean of its two directional terms
    (the projector output stands in for the predictor here)."""
    return (neg_cos(a["z"], b["feats"][:, :8]) + neg_cos(b["z"], a["feats"][:, :8])) / 2


def simsiam_directional(masked, plain):
    """The one term in which the masked view's prediction is compared with the plain view."""
    return neg_cos(masked["z"], plain["feats"][:, :8])


@pytest.mark.parametrize("pairs", [("masked",), ("masked", "none"), ("masked", "none", "both")])
@pytest.mark.parametrize("batched", [True, False])
def test_directional_terms_reproduce_the_official_simsiam_term_means(setup, pairs, batched):
    """Official SimSiam-ADIOS without use_symmetry_mask: per mask k, the mean over the terms
    (p1m, z2), (p2m, z1) [+ (p1, z2), (p2, z1) for no-mask] [+ (p1m, z2m), (p2m, z1m) for
    both-mask], written out term by term."""
    encoder, masker, views = setup
    enc = copy.deepcopy(encoder)
    masks = [masker(v).detach() for v in views]
    torch.manual_seed(0)
    total, per_mask = adios_ssl_loss(enc, simsiam_pair, views, masks, [enc], pairs=pairs,
                                     batched=batched, directional_loss=simsiam_directional)
    ref = copy.deepcopy(encoder)
    x1, x2 = views
    expected = []
    for k in range(N):
        o1, o2 = ref(x1), ref(x2)
        m1, m2 = ref(x1 * (1 - masks[0][:, k:k + 1])), ref(x2 * (1 - masks[1][:, k:k + 1]))
        d = lambda p_out, z_out: neg_cos(p_out["z"], z_out["feats"][:, :8])  # noqa: E731
        terms = [d(m1, o2), d(m2, o1)]
        if "none" in pairs:
            terms += [d(o1, o2), d(o2, o1)]
        if "both" in pairs:
            terms += [d(m1, m2), d(m2, m1)]
        expected.append(torch.stack(terms).mean())
    assert_close_lists(per_mask, expected)
    torch.testing.assert_close(total, torch.stack(expected).sum(), rtol=1e-9, atol=1e-12)
