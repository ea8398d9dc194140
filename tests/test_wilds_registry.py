"""Adding a dataset to ``gradmatch train`` is adding one entry to the table.

A dataset defined here, outside the package (a small WILDS dataset of Gaussian blobs with a
domain shift, an MLP, and a random-noise transform), is registered through the public
functions and trained by the ``gradmatch train`` command, predictions and all. Its transform
draws from torch's global RNG, so it also checks that ``--resume`` restores the RNG states: a
resumed run must equal an uninterrupted one bit for bit (the CdSprites runs draw no global
randomness and could not tell).
"""
import json

import numpy as np
import pytest
import torch
from test_wilds_runner import assert_bitwise_equal, final_model, read_log
from torch import nn
from wilds.common.grouper import CombinatorialGrouper
from wilds.common.metrics.all_metrics import Accuracy
from wilds.datasets.wilds_dataset import WILDSDataset

from gradmatch.cli import main as cli_main
from gradmatch.wilds import presets as P
from gradmatch.wilds.compat import ensure_torch_scatter
from gradmatch.wilds.models import register_model
from gradmatch.wilds.predictions import read_predictions
from gradmatch.wilds.transforms import register_transform

DIM = 8


class Blobs(WILDSDataset):
    """Two classes of Gaussian blobs in 8-d; domain d shifts every point by ``d`` along axis 1."""

    _dataset_name = "blobs"
    _versions_dict = {"1.0": {"download_url": None, "compressed_size": None}}

    def __init__(self, root_dir=".", download=False, split_scheme="official", seed=0,
                 per_domain=48, num_domains=3):
        self._version, self._split_scheme, self._data_dir = "1.0", split_scheme, str(root_dir)
        rng = np.random.default_rng(seed)
        domains = np.repeat(np.arange(num_domains + 2), per_domain)  # the last two: val, test
        y = rng.integers(0, 2, len(domains))
        x = rng.normal(size=(len(domains), DIM)) + 2.0 * y[:, None]
        x[:, 1] += domains
        self._x = torch.tensor(x, dtype=torch.float32)
        self._y_array = torch.tensor(y)
        self._split_array = np.clip(domains - num_domains + 1, 0, 2)
        self._split_dict = {"train": 0, "val": 1, "test": 2}
        self._split_names = {"train": "Train", "val": "Validation", "test": "Test"}
        self._metadata_fields = ["domain", "y"]
        self._metadata_array = torch.stack([torch.tensor(domains), self._y_array], dim=1)
        self._y_size, self._n_classes = 1, 2
        self._eval_grouper = CombinatorialGrouper(self, ["domain"])
        super().__init__(root_dir, download, split_scheme)

    def get_input(self, idx):
        return self._x[idx]

    def eval(self, y_pred, y_true, metadata, prediction_fn=None):
        ensure_torch_scatter()
        return self.standard_group_eval(Accuracy(prediction_fn=prediction_fn), self._eval_grouper,
                                        y_pred, y_true, metadata)


@pytest.fixture(scope="module")
def blobs():
    """Registers the dataset, its source, model and transform (the public registration API)."""
    P.register_source("blobs_generator", lambda preset, root_dir, download, seed, **kw: Blobs(seed=seed, **kw))
    register_model("blobs_mlp", lambda num_outputs, pretrained, allow_download, dataset=None:
                   nn.Sequential(nn.Linear(DIM, 16), nn.ReLU(), nn.Linear(16, num_outputs)))
    register_transform("gaussian_noise", lambda preset, train, allow_download:
                       (lambda x: x + 0.3 * torch.randn_like(x)) if train else None)
    P.register_preset(P.Preset(
        dataset="blobs", model="blobs_mlp", pretrained=False, loss="cross_entropy",
        inner_optimizer="sgd", optimizer_kwargs={"lr": 0.05, "momentum": 0.9}, batch_size=8,
        meta_lr=0.5, meta_steps=None, erm_warmup_steps=0, epochs=2, selection_metric="acc_avg",
        selection_split="val", keep_last_checkpoint=False, groupby_fields=("domain",),
        domain_scheme="combinatorial", eval_every=None, inner_optimizer_state="run",
        eval_batch_size=64, dataset_kwargs={}, source="blobs_generator",
        transform="gaussian_noise", official_metrics=("acc_avg",)), replace=True)
    yield "blobs"
    P.PRESETS.pop("blobs")


def train(out, *extra):
    args = ["train", "--dataset", "blobs", "--out", str(out), "--no-progress", "--log-every", "1",
            "--eval-every", "4", "--checkpoint-every", "4", *map(str, extra)]
    assert cli_main(args) == 0


def test_a_dataset_registered_from_outside_trains_end_to_end(blobs, tmp_path):
    out = tmp_path / "run"
    train(out, "--seed", 1)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"] == "blobs" and summary["replicate"] == "seed:1"
    # one Fish epoch: 3 domains of 48 examples in batches of 8, all 3 domains per step
    train_records = [r for r in read_log(out) if r["kind"] == "train"]
    assert len(train_records) == 2 * 6
    predictions = read_predictions(out / "predictions" / "blobs" /
                                   "blobs_split:test_seed:1_epoch:best_pred.csv")
    assert len(predictions) == 48
    assert summary["metrics"]["test"]["acc_avg"] > 0.6  # the blobs are separable


def test_resume_restores_the_random_state_of_the_transforms(blobs, tmp_path):
    reference = tmp_path / "uninterrupted"
    train(reference, "--max-steps", 12)
    out = tmp_path / "resumed"
    train(out, "--max-steps", 8)
    (out / "summary.json").unlink()  # as if killed after the checkpoint of step 8
    train(out, "--max-steps", 12, "--resume")
    assert_bitwise_equal(final_model(out), final_model(reference))
    losses = [r["loss"] for r in read_log(out) if r["kind"] == "train"]
    assert losses == [r["loss"] for r in read_log(reference) if r["kind"] == "train"]


def test_registration_checks_the_names_it_refers_to(blobs):
    preset = P.get_preset("blobs")
    import dataclasses

    with pytest.raises(ValueError, match="unknown model 'nope'; register it first"):
        P.register_preset(dataclasses.replace(preset, dataset="x", model="nope"))
    with pytest.raises(ValueError, match="exists; pass replace=True"):
        P.register_preset(preset)
