"""CdSprites-N: determinism, geometry, the colour/shape structure, and the WILDSDataset contract."""
import numpy as np
import pytest
import torch
from wilds.common.data_loaders import get_eval_loader, get_train_loader
from wilds.common.grouper import CombinatorialGrouper

from gradmatch.cdsprites import generate_cdsprites, make_palette, render_sprites
from gradmatch.wilds.cdsprites import CdSpritesNDataset

SMALL = dict(num_domains=5, per_domain=200, num_val=400, num_test=400, num_id_val=100, image_size=32)


@pytest.fixture(scope="module")
def data():
    return generate_cdsprites(seed=3, **SMALL)


@pytest.fixture(scope="module")
def dataset():
    return CdSpritesNDataset(seed=3, **SMALL)


def test_generation_is_deterministic_in_the_seed(data):
    again = generate_cdsprites(seed=3, **SMALL)
    other = generate_cdsprites(seed=4, **SMALL)
    assert np.array_equal(data["palette"], again["palette"])
    for split in ("train", "id_val", "val", "test"):
        assert np.array_equal(data[split].masks, again[split].masks)
        assert np.array_equal(data[split].labels, again[split].labels)
    assert not np.array_equal(data["train"].masks, other["train"].masks)


def test_palette_colours_are_distinct_and_bright():
    palette = make_palette(15, np.random.default_rng(0)).reshape(-1, 3)
    distances = np.linalg.norm(palette[:, None] - palette[None], axis=-1)
    np.fill_diagonal(distances, np.inf)
    assert distances.min() > 0.02
    assert palette.max(1).min() >= 0.65 - 1e-6  # HSV value: no colour near the black background


def test_sprite_areas_match_the_shapes():
    """Coverage (pixels) equals the analytic area: 4 s^2 for a square of half-size s, pi * 1.25 s
    * 0.7 s for the ellipse, in units of the canvas half-width (R/2 pixels)."""
    size, m = 64, 400
    for label, area in ((0, lambda s: 4 * s ** 2), (1, lambda s: np.pi * 1.25 * 0.7 * s ** 2)):
        labels = np.full(m, label)
        masks = render_sprites(labels, size, np.random.default_rng(7), supersample=4)
        scale = np.random.default_rng(7).uniform(0.22, 0.45, m)  # the first latent drawn
        pixels = masks.astype(np.float64).sum((1, 2)) / 255
        expected = area(scale) * (size / 2) ** 2
        assert np.allclose(pixels, expected, rtol=0.05)
        # sprites stay on the canvas: the border is empty
        assert masks[:, 0, :].max() == 0 and masks[:, :, -1].max() == 0


def test_colour_predicts_shape_in_training_only(data):
    train, test = data["train"], data["test"]
    assert np.all(train.color_swap == 0) and np.all(data["id_val"].color_swap == 0)
    assert np.bincount(train.palette_domain).tolist() == [SMALL["per_domain"]] * SMALL["num_domains"]
    # in training the (domain, colour) pair determines the label
    assert np.array_equal(train.colour_index, train.labels)
    # on test, P(label | colour) ~ 1/2 for every colour: colour carries no information
    colour_id = test.palette_domain * 2 + test.colour_index
    rate = np.array([test.labels[colour_id == c].mean() for c in np.unique(colour_id)])
    counts = np.array([(colour_id == c).sum() for c in np.unique(colour_id)])
    assert abs(np.average(rate, weights=counts) - 0.5) < 0.05
    assert 0.4 < test.color_swap.mean() < 0.6


def test_is_a_wilds_dataset(dataset):
    assert dataset.split_dict == {"train": 0, "id_val": 1, "val": 2, "test": 3}
    assert dataset.metadata_fields == ["domain", "color_swap", "y", "from_source_domain"]
    x, y, meta = dataset[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert 0 <= x.min() and x.max() <= 1
    train = dataset.get_subset("train")
    grouper = CombinatorialGrouper(dataset, ["domain"])
    assert grouper.n_groups == SMALL["num_domains"]
    loader = get_train_loader("group", train, batch_size=20, grouper=grouper, n_groups_per_batch=4)
    xb, yb, mb = next(iter(loader))
    assert xb.shape == (20, 3, 32, 32)
    assert len(torch.unique(grouper.metadata_to_group(mb))) == 4
    assert len(get_eval_loader("standard", dataset.get_subset("test"), batch_size=64)) == 7


def test_input_colour_is_the_palette_colour(dataset):
    for idx in (0, 1, len(dataset) - 1):
        x, y, meta = dataset[idx]
        domain, swap = int(meta[0]), int(meta[1])
        colour = dataset.palette[domain, int(y) ^ swap]
        brightest = x.reshape(3, -1)[:, x.sum(0).argmax()]
        assert torch.allclose(brightest, colour, atol=1e-6)


def test_eval_separates_colour_readers_from_shape_readers(dataset):
    """A classifier that reads colour is perfect on colour-aligned images and wrong on every
    swapped one; the true labels score 1 everywhere."""
    test = dataset.get_subset("test")
    meta = test.metadata_array
    y = test.y_array
    colour_reader = y ^ meta[:, 1]
    results, text = dataset.eval(colour_reader, y, meta)
    assert results["acc_color_swap:aligned"] == pytest.approx(1.0)
    assert results["acc_color_swap:swapped"] == pytest.approx(0.0)
    assert results["acc_wg"] == pytest.approx(0.0)
    assert results["acc_avg"] == pytest.approx((colour_reader == y).float().mean().item())
    assert dataset.eval(y.clone(), y, meta)[0]["acc_avg"] == pytest.approx(1.0)


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="num_domains"):
        generate_cdsprites(num_domains=0)
    with pytest.raises(ValueError, match="split_scheme"):
        CdSpritesNDataset(split_scheme="random", **SMALL)
