"""The Fish engine against the paper's derivation and against a plain reference implementation."""
import copy
import functools
import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from gradmatch import ERM, IDGM, Fish, NonFiniteLossError, gradient_inner_product, idgm_objective
from gradmatch.gip import domain_losses_and_gradients
from gradmatch.idgm import idgm_terms
from gradmatch.losses import cross_entropy_loss


def make_mlp(seed=0, dtype=torch.float64, d_in=4, hidden=8, classes=3):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, classes)).to(dtype)


def make_domains(num_domains, n=16, d_in=4, classes=3, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    batches = []
    for i in range(num_domains):
        x = torch.randn(n, d_in, generator=g, dtype=dtype) + 0.5 * i
        y = torch.randint(0, classes, (n,), generator=g)
        batches.append((x, y))
    return batches


def flat_params(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def reference_fish_step(model, batches, lr, eps, order):
    """Algorithm 1 written plainly: deepcopy, SGD over `order`, out-of-place meta step."""
    inner = copy.deepcopy(model)
    opt = torch.optim.SGD(inner.parameters(), lr=lr)
    for i in order:
        opt.zero_grad()
        cross_entropy_loss(inner, batches[i]).backward()
        opt.step()
    with torch.no_grad():
        for p, q in zip(model.parameters(), inner.parameters()):
            p.copy_(p + eps * (q - p))


# ---------------------------------------------------------------- the paper's Taylor argument
def averaged_fish_displacement(model, batches, alpha):
    """E_perm[theta - theta_inner] over all S! domain orders, one SGD step of size alpha each."""
    theta0 = flat_params(model)
    total = torch.zeros_like(theta0)
    perms = list(itertools.permutations(range(len(batches))))
    for perm in perms:
        m = copy.deepcopy(model)
        fish = Fish(m, functools.partial(torch.optim.SGD, lr=alpha), meta_lr=1.0, shuffle_domains=False)
        fish.step([batches[i] for i in perm])
        total += theta0 - flat_params(m)
    return total / len(perms)


def taylor_predictions(model, batches, alpha):
    """(alpha * grad(sum L_i - alpha/2 sum_{i<j} G_i.G_j), alpha * grad(sum L_i)) at theta."""
    s = len(batches)
    params = list(model.parameters())
    mean_loss, gip = idgm_terms(model, batches)
    sum_loss = s * mean_loss
    sum_pairs = gip * s * (s - 1) / 2
    with_gip = torch.autograd.grad(sum_loss - alpha / 2 * sum_pairs, params, retain_graph=True)
    erm_only = torch.autograd.grad(sum_loss, params)
    def flat(gs):
        return torch.cat([g.reshape(-1) for g in gs])
    return alpha * flat(with_gip), alpha * flat(erm_only)


def test_fish_update_matches_gip_objective_to_third_order():
    model = make_mlp()
    batches = make_domains(4)
    alphas = [0.1, 0.05, 0.025, 0.0125]
    err_gip, err_erm = [], []
    for alpha in alphas:
        fish = averaged_fish_displacement(model, batches, alpha)
        pred_gip, pred_erm = taylor_predictions(model, batches, alpha)
        err_gip.append((fish - pred_gip).norm().item())
        err_erm.append((fish - pred_erm).norm().item())
    slope_gip = np.polyfit(np.log(alphas), np.log(err_gip), 1)[0]
    slope_erm = np.polyfit(np.log(alphas), np.log(err_erm), 1)[0]
    # O(alpha^3) residual with the GIP term, only O(alpha^2) without it.
    assert 2.7 < slope_gip < 3.3, (slope_gip, err_gip)
    assert 1.7 < slope_erm < 2.3, (slope_erm, err_erm)
    assert err_gip[-1] < 0.05 * err_erm[-1]


# ---------------------------------------------------------------- exact IDGM objective
def test_idgm_gradient_matches_finite_differences():
    model = make_mlp(seed=3)
    batches = make_domains(3, seed=4)
    gamma = 0.7
    params = list(model.parameters())
    obj = idgm_objective(model, batches, gamma)
    analytic = torch.cat([g.reshape(-1) for g in torch.autograd.grad(obj, params)])

    flat = flat_params(model)
    h = 1e-6
    numeric = torch.zeros_like(flat)
    def set_flat(v):
        i = 0
        with torch.no_grad():
            for p in params:
                p.copy_(v[i:i + p.numel()].reshape(p.shape))
                i += p.numel()
    for k in range(flat.numel()):
        e = torch.zeros_like(flat)
        e[k] = h
        set_flat(flat + e)
        up = idgm_objective(model, batches, gamma).item()
        set_flat(flat - e)
        down = idgm_objective(model, batches, gamma).item()
        numeric[k] = (up - down) / (2 * h)
    set_flat(flat)
    assert torch.allclose(analytic, numeric, rtol=1e-5, atol=1e-7)


def test_gip_is_mean_pairwise_inner_product():
    model = make_mlp()
    batches = make_domains(4)
    _, grads = domain_losses_and_gradients(model, batches, cross_entropy_loss)
    pairs = [grads[i].dot(grads[j]).item() for i, j in itertools.combinations(range(4), 2)]
    cos = [(grads[i].dot(grads[j]) / grads[i].norm() / grads[j].norm()).item()
           for i, j in itertools.combinations(range(4), 2)]
    stats = gradient_inner_product(model, batches, cross_entropy_loss)
    assert stats["gip"] == pytest.approx(np.mean(pairs), rel=1e-10)
    assert stats["gip_cos"] == pytest.approx(np.mean(cos), rel=1e-10)


def test_idgm_step_raises_gip_when_gamma_large():
    model = make_mlp(seed=5)
    batches = make_domains(3, seed=6)
    learner = IDGM(model, functools.partial(torch.optim.SGD, lr=0.05), gamma=5.0)
    first = learner.step(batches)["gip"]
    for _ in range(20):
        last = learner.step(batches)["gip"]
    assert last > first


# ---------------------------------------------------------------- engine mechanics
def test_fixed_order_matches_reference_implementation():
    model = make_mlp()
    ref = copy.deepcopy(model)
    batches = make_domains(3)
    fish = Fish(model, functools.partial(torch.optim.SGD, lr=0.1), meta_lr=0.3, shuffle_domains=False)
    for _ in range(4):
        fish.step(batches)
        reference_fish_step(ref, batches, lr=0.1, eps=0.3, order=[0, 1, 2])
    assert torch.allclose(flat_params(model), flat_params(ref), atol=1e-12)


def test_official_step_size_divides_by_domains_visited():
    batches = make_domains(4)
    a, b = make_mlp(), make_mlp()
    fa = Fish(a, functools.partial(torch.optim.SGD, lr=0.1), meta_lr=0.4, step_size="official",
              meta_steps=2, seed=7)
    fa.step(batches)
    order = Fish(make_mlp(), functools.partial(torch.optim.SGD, lr=0.1), meta_lr=0.4,
                 meta_steps=2, seed=7).domain_order(4)
    assert len(order) == 2 and len(set(order)) == 2
    reference_fish_step(b, batches, lr=0.1, eps=0.2, order=order)
    assert torch.allclose(flat_params(a), flat_params(b), atol=1e-12)


def test_random_order_visits_all_permutations():
    fish = Fish(make_mlp(), functools.partial(torch.optim.SGD, lr=0.1), meta_lr=0.5, seed=0)
    seen = {tuple(fish.domain_order(3)) for _ in range(200)}
    assert seen == set(itertools.permutations(range(3)))
    fixed = Fish(make_mlp(), functools.partial(torch.optim.SGD, lr=0.1), meta_lr=0.5, shuffle_domains=False)
    assert fixed.domain_order(3) == [0, 1, 2]


def test_random_order_matches_reference_with_same_order():
    batches = make_domains(3)
    model, ref = make_mlp(), make_mlp()
    fish = Fish(model, functools.partial(torch.optim.SGD, lr=0.1), meta_lr=0.5, seed=11)
    shadow = Fish(make_mlp(), functools.partial(torch.optim.SGD, lr=0.1), meta_lr=0.5, seed=11)
    for _ in range(3):
        order = shadow.domain_order(3)
        fish.step(batches)
        reference_fish_step(ref, batches, lr=0.1, eps=0.5, order=order)
    assert torch.allclose(flat_params(model), flat_params(ref), atol=1e-12)


def test_inner_copy_is_persistent_and_updates_in_place():
    model = make_mlp()
    fish = Fish(model, functools.partial(torch.optim.Adam, lr=1e-2), meta_lr=0.5)
    inner_ptrs = [p.data_ptr() for p in fish.inner.parameters()]
    meta_ptrs = [p.data_ptr() for p in model.parameters()]
    inner_id = id(fish.inner)
    for _ in range(3):
        fish.step(make_domains(3))
    assert id(fish.inner) == inner_id
    assert [p.data_ptr() for p in fish.inner.parameters()] == inner_ptrs
    assert [p.data_ptr() for p in model.parameters()] == meta_ptrs
    assert all(p.grad is None for p in model.parameters())


def test_inner_optimizer_state_carried_or_reset():
    batches = make_domains(3)
    carried = Fish(make_mlp(), functools.partial(torch.optim.Adam, lr=1e-2), meta_lr=0.5, shuffle_domains=False)
    reset = Fish(make_mlp(), functools.partial(torch.optim.Adam, lr=1e-2), meta_lr=0.5, shuffle_domains=False,
                 reset_inner_optimizer=True)
    for _ in range(3):
        carried.step(batches)
        reset.step(batches)
    def steps(f):
        return int(next(iter(f.inner_optimizer.state.values()))["step"])
    assert steps(carried) == 9
    assert steps(reset) == 3


def test_batchnorm_buffers_interpolated_or_copied():
    def bn_model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).double()
    batches = make_domains(2)
    results = {}
    for mode in ("interpolate", "copy"):
        model = bn_model()
        fish = Fish(model, functools.partial(torch.optim.SGD, lr=0.1), meta_lr=0.25, buffers=mode,
                    shuffle_domains=False)
        before = model[1].running_mean.clone()
        fish.step(batches)
        inner_mean = fish.inner[1].running_mean.clone()
        results[mode] = (before, inner_mean, model[1].running_mean.clone())
        assert int(model[1].num_batches_tracked) == int(fish.inner[1].num_batches_tracked) == 2
    before, inner, after = results["interpolate"]
    assert torch.allclose(after, before + 0.25 * (inner - before))
    _, inner, after = results["copy"]
    assert torch.equal(after, inner)


def test_erm_warmup_then_fish():
    batches = make_domains(3)
    model = make_mlp()
    ref = make_mlp()
    fish = Fish(model, functools.partial(torch.optim.SGD, lr=0.1), meta_lr=0.5, erm_warmup_steps=2,
                shuffle_domains=False)
    erm = ERM(ref, functools.partial(torch.optim.SGD, lr=0.1))
    phases = [fish.step(batches)["phase"] for _ in range(2)]
    erm.step(batches)
    erm.step(batches)
    assert phases == [0.0, 0.0]
    assert torch.allclose(flat_params(model), flat_params(ref), atol=1e-12)
    assert fish.step(batches)["phase"] == 1.0
    reference_fish_step(ref, batches, lr=0.1, eps=0.5, order=[0, 1, 2])
    assert torch.allclose(flat_params(model), flat_params(ref), atol=1e-12)


def test_state_dict_resumes_exactly():
    batches = [make_domains(4, seed=s) for s in range(8)]
    def build():
        return Fish(make_mlp(dtype=torch.float32), functools.partial(torch.optim.Adam, lr=1e-2, amsgrad=True),
                    meta_lr=0.3, meta_steps=3, step_size="official", erm_warmup_steps=2, seed=5)
    straight = build()
    for b in batches:
        straight.step([(x.float(), y) for x, y in b])
    first = build()
    for b in batches[:4]:
        first.step([(x.float(), y) for x, y in b])
    state = copy.deepcopy(first.state_dict())
    assert set(state["model"]) == set(first.model.state_dict())  # one copy of the network
    resumed = build()
    resumed.model.apply(lambda m: m.reset_parameters() if hasattr(m, "reset_parameters") else None)
    resumed.load_state_dict(state)
    for b in batches[4:]:
        resumed.step([(x.float(), y) for x, y in b])
    assert torch.equal(flat_params(straight.model), flat_params(resumed.model))


def test_gip_tracking_is_off_by_default_and_free():
    calls = []
    def counting_loss(model, batch):
        calls.append(1)
        return cross_entropy_loss(model, batch)
    fish = Fish(make_mlp(), functools.partial(torch.optim.SGD, lr=0.1), meta_lr=0.5, loss_fn=counting_loss)
    stats = fish.step(make_domains(3))
    assert "gip" not in stats and len(calls) == 3
    stats = fish.step(make_domains(3), track_gip=True)
    assert "gip" in stats and "gip_cos" in stats and len(calls) == 9


def test_gip_tracking_does_not_move_batchnorm_stats():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).double()
    before = model[1].running_mean.clone()
    gradient_inner_product(model, make_domains(3), cross_entropy_loss)
    assert torch.equal(model[1].running_mean, before)


def test_non_finite_loss_raises_clear_error():
    model = make_mlp()
    fish = Fish(model, functools.partial(torch.optim.SGD, lr=0.1), meta_lr=0.5)
    x, y = make_domains(1)[0]
    bad = (torch.full_like(x, float("nan")), y)
    with pytest.raises(NonFiniteLossError, match="lower the learning rate"):
        fish.step([make_domains(1)[0], bad])


@pytest.mark.parametrize("kwargs,match", [
    (dict(meta_lr=0.0), "meta_lr"),
    (dict(meta_lr=float("nan")), "meta_lr"),
    (dict(meta_lr=0.5, step_size="paper"), "step_size"),
    (dict(meta_lr=0.5, buffers="average"), "buffers"),
    (dict(meta_lr=0.5, meta_steps=0), "meta_steps"),
])
def test_bad_config_values_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Fish(make_mlp(), functools.partial(torch.optim.SGD, lr=0.1), **kwargs)


def test_meta_steps_larger_than_domains_rejected():
    fish = Fish(make_mlp(), functools.partial(torch.optim.SGD, lr=0.1), meta_lr=0.5, meta_steps=5)
    with pytest.raises(ValueError, match="meta_steps=5"):
        fish.step(make_domains(3))


def test_follows_model_moved_after_construction():
    model = make_mlp(dtype=torch.float32)
    fish = Fish(model, functools.partial(torch.optim.Adam, lr=1e-2), meta_lr=0.5)
    fish.step([(x.float(), y) for x, y in make_domains(2)])
    model.double()
    fish.step(make_domains(2))
    assert next(fish.inner.parameters()).dtype == torch.float64
    assert math.isfinite(flat_params(model).sum().item())
