"""The plugin's algorithms inside DomainBed (needs a checkout: $DOMAINBED_DIR or
~/.cache/gradmatch/upstream/DomainBed; skipped with that reason otherwise)."""
import copy
import re

import pytest
import torch

from gradmatch.domainbed import DomainBedNotFound, find_checkout

try:
    find_checkout()
except DomainBedNotFound as err:  # pragma: no cover - depends on the machine
    pytest.skip(f"no DomainBed checkout: {err}", allow_module_level=True)

from gradmatch.domainbed.register import register  # noqa: E402

register()
from domainbed import algorithms, hparams_registry  # noqa: E402

INPUT, CLASSES, DOMAINS = (2, 28, 28), 2, 3


def batches(seed, n=8):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, *INPUT, generator=g), torch.randint(0, CLASSES, (n,), generator=g))
            for _ in range(DOMAINS)]


def flat(module):
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()])


def test_registered_by_name_next_to_builtin_fish():
    assert algorithms.get_algorithm_class("FishFast").__module__ == "gradmatch.domainbed.algorithms"
    assert algorithms.get_algorithm_class("Fish").__module__ == "domainbed.algorithms"
    assert {"FishFast", "IDGM", "Fish"} <= set(algorithms.ALGORITHMS)
    before = len(algorithms.ALGORITHMS)
    register()  # idempotent
    assert len(algorithms.ALGORITHMS) == before


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_hparams_share_fish_draws_and_leave_others_alone(seed):
    fast = hparams_registry.random_hparams("FishFast", "ColoredMNIST", seed)
    fish = hparams_registry.random_hparams("Fish", "ColoredMNIST", seed)
    assert {k: fast[k] for k in fish} == fish
    assert set(fast) - set(fish) == {"fish_inner_optimizer", "fish_step_size", "fish_shuffle_domains",
                                     "fish_reset_inner_optimizer", "fish_erm_warmup_steps", "fish_gip_every"}
    idgm = hparams_registry.random_hparams("IDGM", "PACS", seed)
    erm = hparams_registry.random_hparams("ERM", "PACS", seed)
    assert {k: idgm[k] for k in erm} == erm and 0.01 <= idgm["idgm_gamma"] <= 1


def test_domainbed_compatible_setting_equals_builtin_fish():
    """Fixed domain order, Adam inner steps carried over, eps = meta_lr: the same parameters as
    DomainBed's own Fish after several updates from the same weights and batches (to float32
    rounding, which Adam's normalisation amplifies a little from step to step)."""
    torch.manual_seed(0)
    builtin = algorithms.Fish(INPUT, CLASSES, DOMAINS, hparams_registry.default_hparams("Fish", "ColoredMNIST"))
    hparams = hparams_registry.default_hparams("FishFast", "ColoredMNIST")
    hparams.update(fish_shuffle_domains=False, fish_gip_every=0)
    plugin = algorithms.get_algorithm_class("FishFast")(INPUT, CLASSES, DOMAINS, hparams)
    plugin.network.load_state_dict(copy.deepcopy(builtin.network.state_dict()))
    start = flat(builtin.network)
    for step in range(5):
        b = batches(step)
        builtin.update(b)
        plugin.update(b)
        if step == 0:
            assert torch.allclose(flat(plugin.network), flat(builtin.network), rtol=0, atol=1e-8)
    moved = flat(builtin.network) - start
    gap = flat(plugin.network) - flat(builtin.network)
    assert moved.norm() > 1e-2
    assert gap.norm() / moved.norm() < 1e-4


def test_paper_setting_shuffles_domains_and_logs_gip():
    """GIP is measured every ``fish_gip_every`` updates and repeated in between: every update
    returns the same keys (DomainBed's train.py prints a new header when they change)."""
    torch.manual_seed(0)
    hparams = hparams_registry.default_hparams("FishFast", "ColoredMNIST")
    hparams.update(fish_gip_every=2)
    plugin = algorithms.get_algorithm_class("FishFast")(INPUT, CLASSES, DOMAINS, hparams)
    logs = [plugin.update(batches(s)) for s in range(4)]
    assert all(set(log) == {"loss", "phase", "gip", "gip_cos"} for log in logs)
    assert all(isinstance(v, float) for log in logs for v in log.values())
    gips = [log["gip"] for log in logs]
    assert gips[1] == gips[0] and gips[3] == gips[2] and gips[2] != gips[0]  # measured at 0 and 2
    hparams.update(fish_gip_every=0)
    quiet = algorithms.get_algorithm_class("FishFast")(INPUT, CLASSES, DOMAINS, hparams)
    assert all(set(quiet.update(batches(s))) == {"loss", "phase"} for s in range(2))
    orders = {tuple(plugin.fish.domain_order(DOMAINS)) for _ in range(60)}
    assert len(orders) == 6


def test_state_dict_holds_one_network_and_loads_strictly():
    torch.manual_seed(0)
    hparams = hparams_registry.default_hparams("FishFast", "ColoredMNIST")
    plugin = algorithms.get_algorithm_class("FishFast")(INPUT, CLASSES, DOMAINS, hparams)
    builtin = algorithms.Fish(INPUT, CLASSES, DOMAINS, hparams_registry.default_hparams("Fish", "ColoredMNIST"))
    plugin.update(batches(0))
    builtin.update(batches(0))
    state = plugin.state_dict()
    assert all(k.startswith("network.") for k in state)
    assert 2 * len(state) == len(builtin.state_dict())  # built-in Fish also saves its inner network
    fresh = algorithms.get_algorithm_class("FishFast")(INPUT, CLASSES, DOMAINS, hparams)
    fresh.load_state_dict(state)  # strict, DomainBed's documented recipe
    x = batches(1)[0][0]
    assert torch.equal(fresh.predict(x), plugin.predict(x))


def test_idgm_algorithm_updates_and_reports_gip():
    torch.manual_seed(0)
    hparams = hparams_registry.default_hparams("IDGM", "ColoredMNIST")
    algo = algorithms.get_algorithm_class("IDGM")(INPUT, CLASSES, DOMAINS, hparams)
    before = flat(algo.network)
    log = algo.update(batches(0))
    assert set(log) == {"loss", "objective", "gip"}
    assert log["objective"] == pytest.approx(log["loss"] - hparams["idgm_gamma"] * log["gip"], rel=1e-5)
    assert not torch.equal(before, flat(algo.network))


def test_cdsprites_is_a_domainbed_dataset():
    from domainbed import datasets

    assert {"CdSprites5", "CdSprites15"} <= set(datasets.DATASETS)
    assert datasets.num_environments("CdSprites5") == 6
    data = datasets.get_dataset_class("CdSprites5")("unused", [5], {})
    assert data.input_shape == (3, 32, 32) and data.num_classes == 2
    for env in range(6):
        x, y = data[env].tensors
        # the colour of each sprite: its brightest pixel, as an RGB triple
        colours = x.flatten(2).gather(2, x.sum(1).flatten(1).argmax(1)[:, None, None].expand(-1, 3, 1))[..., 0]
        keys = [tuple(c) for c in colours.round(decimals=4).tolist()]
        per_colour = {}
        for k, label in zip(keys, y.tolist()):
            per_colour.setdefault(k, []).append(label)
        agreement = sum(max(v.count(0), v.count(1)) for v in per_colour.values()) / len(keys)
        if env < 5:
            assert len(per_colour) == 2 and agreement == 1.0  # colour gives the label away
        else:
            assert len(per_colour) == 10 and agreement < 0.6  # colour is uninformative


@pytest.mark.parametrize("name,value,message", [
    ("meta_lr", -1, "FishFast hparam meta_lr must be a positive finite number, got -1"),
    ("meta_lr", float("nan"), "meta_lr must be a positive finite number, got nan"),
    ("lr", 0, "FishFast hparam lr must be a positive finite number, got 0"),
    ("weight_decay", -0.1, "weight_decay must be a finite number >= 0"),
    ("fish_inner_optimizer", "rmsprop", 'fish_inner_optimizer must be one of "adam", "sgd"'),
    ("fish_step_size", "half", 'fish_step_size must be one of "domainbed", "official"'),
    ("fish_shuffle_domains", "yes", "fish_shuffle_domains must be true or false, got 'yes'"),
    ("fish_erm_warmup_steps", -3, "fish_erm_warmup_steps must be an integer >= 0, got -3"),
    ("fish_gip_every", 1.5, "fish_gip_every must be an integer >= 0, got 1.5"),
    ("fish_gip_evry", 5, "unknown FishFast hparam 'fish_gip_evry'"),
])
def test_fishfast_rejects_bad_hparams_naming_them(name, value, message):
    hparams = hparams_registry.default_hparams("FishFast", "ColoredMNIST")
    hparams[name] = value
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        algorithms.get_algorithm_class("FishFast")(INPUT, CLASSES, DOMAINS, hparams)
    assert "\n" not in str(err.value) and "--hparams" in str(err.value)


def test_idgm_rejects_bad_hparams_and_a_single_domain():
    hparams = hparams_registry.default_hparams("IDGM", "ColoredMNIST")
    cls = algorithms.get_algorithm_class("IDGM")
    with pytest.raises(ValueError, match="IDGM hparam idgm_gamma must be a finite number >= 0, got -1"):
        cls(INPUT, CLASSES, DOMAINS, {**hparams, "idgm_gamma": -1})
    with pytest.raises(ValueError, match="needs at least 2, got 1: hold out fewer environments with --test_envs"):
        cls(INPUT, CLASSES, 1, hparams)
    cls(INPUT, CLASSES, DOMAINS, {**hparams, "fish_anything": 1})  # another algorithm's prefix: ignored
