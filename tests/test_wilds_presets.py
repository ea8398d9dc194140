"""WILDS presets: official values, model shapes, offline pretrained loading, transforms, domains."""
import csv
import functools
import os
import sys
import types

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

from gradmatch import losses
from gradmatch.wilds import presets as P
from gradmatch.wilds.models import torchvision_checkpoint_path
from gradmatch.wilds.transforms import BertTokenize

NAMES = ("camelyon17", "fmow", "iwildcam", "poverty", "civilcomments", "amazon")
# (in channels, outputs) of each image preset; outputs = WILDS n_classes (poverty: regression).
IMAGE_SHAPES = {"camelyon17": (3, 2), "fmow": (3, 62), "iwildcam": (3, 182), "poverty": (8, 1)}


def test_presets_cover_the_six_fish_datasets_and_unknown_names_raise():
    # the six WILDS datasets, and CdSprites-N: an entry of the same table
    assert set(P.PRESETS) == set(NAMES) | {"cdsprites"}
    for name in NAMES:
        assert P.get_preset(name) == P.PRESETS[name]
    with pytest.raises(ValueError, match="known presets: amazon, camelyon17, cdsprites, civilcomments"):
        P.get_preset("camelyon")


def test_get_preset_returns_a_private_copy():
    P.get_preset("fmow").optimizer_kwargs["lr"] = 1.0
    assert P.PRESETS["fmow"].optimizer_kwargs["lr"] == 1e-4


# The parenthesised effective meta step of the notes' table (eps = meta_lr / meta_steps).
@pytest.mark.parametrize("name,eps", [("fmow", 0.002), ("camelyon17", 0.0033), ("poverty", 0.02),
                                      ("iwildcam", 0.001), ("amazon", 0.002), ("civilcomments", 0.01)])
def test_meta_lr_over_meta_steps_is_the_official_effective_step(name, eps):
    preset = P.get_preset(name)
    assert preset.meta_step_size == preset.meta_lr / preset.meta_steps
    assert preset.meta_step_size == pytest.approx(eps, abs=5e-5)


def test_optimizer_factory_and_loss():
    adam = P.inner_optimizer_factory("fmow")
    assert isinstance(adam, functools.partial) and adam.func is torch.optim.Adam
    assert adam.keywords == {"lr": 1e-4, "weight_decay": 0.0, "amsgrad": True, "betas": (0.9, 0.999)}
    sgd = P.inner_optimizer_factory("camelyon17", lr=0.5)([nn.Parameter(torch.zeros(1))])
    assert isinstance(sgd, torch.optim.SGD)
    assert (sgd.defaults["lr"], sgd.defaults["momentum"]) == (0.5, 0.9)
    assert P.loss_fn_for("poverty") is losses.mse_loss
    assert P.loss_fn_for("amazon") is losses.cross_entropy_loss


@pytest.mark.parametrize("name", IMAGE_SHAPES)
def test_image_models_map_inputs_to_logits(name):
    channels, outputs = IMAGE_SHAPES[name]
    model = P.build_model(name, outputs, pretrained=False).eval()
    with torch.no_grad():
        assert model(torch.randn(2, channels, 64, 64)).shape == (2, outputs)
    if name == "poverty":
        assert model.conv1.in_channels == 8
        with pytest.raises(RuntimeError):
            model(torch.randn(2, 3, 64, 64))
        with pytest.raises(ValueError, match="from scratch"):
            P.build_model(name, outputs, pretrained=True)


@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    """An empty torch hub directory."""
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    return tmp_path / "hub"


PRETRAINED = {"fmow": "densenet121", "iwildcam": "resnet50"}


@pytest.mark.parametrize("name", PRETRAINED)
def test_pretrained_without_cached_weights_fails_clearly(name, hub_dir):
    arch = PRETRAINED[name]
    expected = hub_dir / "checkpoints" / os.path.basename(
        torchvision.models.get_model_weights(arch).IMAGENET1K_V1.url)
    with pytest.raises(P.MissingPretrainedWeights) as err:
        P.build_model(name, 3)  # the preset's official pretrained=True
    assert "--no-pretrained" in str(err.value) and "--download" in str(err.value)
    assert str(expected) in str(err.value)
    assert not expected.exists()  # nothing was downloaded


@pytest.mark.parametrize("name", PRETRAINED)
def test_pretrained_loads_a_planted_checkpoint(name, hub_dir):
    arch = PRETRAINED[name]
    torch.manual_seed(0)
    planted = getattr(torchvision.models, arch)().state_dict()
    path = torchvision_checkpoint_path(torchvision.models.get_model_weights(arch).IMAGENET1K_V1)
    os.makedirs(os.path.dirname(path))
    torch.save(planted, path)
    loaded = P.build_model(name, 3).state_dict()
    head = "classifier." if arch == "densenet121" else "fc."
    assert loaded[head + "weight"].shape == (3, planted[head + "weight"].shape[1])
    backbone = [k for k in planted if not k.startswith(head)]
    assert backbone and set(backbone) == {k for k in loaded if not k.startswith(head)}
    for k in backbone:
        assert torch.equal(loaded[k], planted[k]), k


def test_text_presets_without_transformers_name_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    for call in (lambda: P.build_model("amazon", 5, pretrained=False),
                 lambda: P.build_transform("civilcomments", train=True)):
        with pytest.raises(ImportError, match=r"pip install gradmatch-adios\[text\]"):
            call()


@pytest.fixture
def fake_transformers(monkeypatch):
    """A stand-in ``transformers`` whose caches are empty and whose model is a tiny bag of words."""
    calls = []

    class FakeModel(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.emb, self.head = nn.Embedding(10, 4), nn.Linear(4, config.num_labels)

        def forward(self, input_ids, attention_mask):
            h = (self.emb(input_ids) * attention_mask.unsqueeze(-1)).sum(1)
            return types.SimpleNamespace(logits=self.head(h))

        @classmethod
        def from_pretrained(cls, name, **kwargs):
            calls.append((name, kwargs))
            raise OSError("not cached")

    fake = types.SimpleNamespace(
        DistilBertConfig=lambda num_labels: types.SimpleNamespace(num_labels=num_labels),
        DistilBertForSequenceClassification=FakeModel,
        DistilBertTokenizerFast=types.SimpleNamespace(from_pretrained=FakeModel.from_pretrained))
    monkeypatch.setitem(sys.modules, "transformers", fake)
    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(
        constants=types.SimpleNamespace(HF_HUB_CACHE="/hf-cache")))
    return calls


def test_distilbert_wrapper_and_offline_errors(fake_transformers):
    model = P.build_model("civilcomments", 2, pretrained=False)
    x = torch.stack((torch.randint(0, 10, (3, 7)), torch.ones(3, 7, dtype=torch.long)), dim=2)
    assert model(x).shape == (3, 2)
    with pytest.raises(P.MissingPretrainedWeights, match="--no-pretrained.*--download") as err:
        P.build_model("amazon", 5)
    assert "/hf-cache" in str(err.value)
    with pytest.raises(P.MissingPretrainedWeights, match="tokenizer.*--download"):
        P.build_transform("amazon", train=False)
    assert fake_transformers == [("distilbert-base-uncased", {"num_labels": 5, "local_files_only": True}),
                                 ("distilbert-base-uncased", {"local_files_only": True})]


def test_bert_tokenize_stacks_ids_and_mask():
    def tokenizer(text, padding, truncation, max_length, return_tensors):
        ids = torch.arange(1, max_length + 1).unsqueeze(0)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    x = BertTokenize(tokenizer, 300)("a comment")
    assert x.shape == (300, 2) and x[4].tolist() == [5, 1]


def test_image_transforms_follow_the_official_preprocessing():
    camelyon = P.build_transform("camelyon17", train=True)(Image.new("RGB", (96, 96)))
    iwildcam = P.build_transform("iwildcam", train=False)(Image.new("RGB", (300, 200)))
    fmow = P.build_transform("fmow", train=True)(Image.new("RGB", (64, 64), (124, 116, 104)))
    assert camelyon.shape == iwildcam.shape == (3, 224, 224)
    assert fmow.shape == (3, 64, 64)  # no resize
    assert fmow.abs().max() < 0.01  # ImageNet mean colour normalises to ~0


def test_poverty_transforms():
    torch.manual_seed(0)
    img = torch.randn(8, 16, 16)
    assert torch.equal(P.build_transform("poverty", train=False)(img), img)
    out = P.build_transform("poverty", train=True)(img.clone())
    assert out.shape == img.shape
    flips = [img, img.flip(-1), img.flip(-2), img.flip(-1).flip(-2)]
    assert any(torch.equal(out[3:], f[3:]) for f in flips)  # non-RGB bands are only flipped
    augment = P.build_transform("poverty", train=True)
    augment.jitter = nn.Identity()  # then RGB (here within reflectance [0, 1]) flips with the rest
    small = 0.1 * img
    out = augment(small.clone())
    small_flips = [small, small.flip(-1), small.flip(-2), small.flip(-1).flip(-2)]
    assert any(torch.allclose(out, f, atol=1e-5) for f in small_flips)


# --------------------------------------------------------------------------- real WILDS classes

def _write(path, df, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, **kw)


def _fabricate(root):
    """Minimal on-disk versions of the six datasets (metadata only), each marked as released."""
    for d in (
        "camelyon17_v1.0", "fmow_v1.1", "iwildcam_v2.0", "poverty_v1.1", "amazon_v2.1", "civilcomments_v1.0",
    ):
        (root / d).mkdir()
        (root / d / f"RELEASE_v{d.split('_v')[1]}.txt").touch()
    _write(root / "camelyon17_v1.0/metadata.csv", pd.DataFrame({
        "patient": ["004"] * 10, "node": 0, "x_coord": range(10), "y_coord": 0, "tumor": [0, 1] * 5,
        "slide": range(10), "center": [0, 0, 1, 1, 2, 2, 3, 3, 4, 4], "split": [0, 1] * 5}))
    _write(root / "fmow_v1.1/rgb_metadata.csv", pd.DataFrame({
        "split": ["train", "train", "train", "val", "test", "seq"],
        "timestamp": ["2005-01-01T00:00:00Z", "2010-06-01T00:00:00Z", "2012-01-01T00:00:00Z",
                      "2014-01-01T00:00:00Z", "2017-01-01T00:00:00Z", "2011-01-01T00:00:00Z"],
        "country_code": ["USA", "FRA", "USA", "FRA", "USA", "FRA"], "category": "airport"}), index=False)
    _write(root / "fmow_v1.1/country_code_mapping.csv",
           pd.DataFrame({"alpha-3": ["USA", "FRA"], "region": ["Americas", "Europe"]}), index=False)
    _write(root / "iwildcam_v2.0/metadata.csv", pd.DataFrame({
        "split": ["train", "train", "val", "test", "id_val", "id_test"], "filename": "a.jpg",
        "y": [0, 1, 0, 1, 0, 1], "location_remapped": [0, 1, 2, 3, 0, 1], "sequence_remapped": range(6),
        "datetime": "2013-01-01 10:00:00.000"}), index=False)
    _write(root / "poverty_v1.1/dhs_metadata.csv", pd.DataFrame({
        "country": ["ghana", "kenya", "angola", "benin", "ghana"], "urban": [True, False, True, False, True],
        "wealthpooled": [0.1, -0.2, 0.3, 0.0, 0.5]}), index=False)
    _write(root / "amazon_v2.1/reviews.csv", pd.DataFrame({
        "reviewerID": ["u1", "u2", "u1", "u3"], "asin": ["p1", "p2", "p3", "p1"], "reviewTime": "01 1, 2014",
        "unixReviewTime": 1388534400, "reviewText": "ok", "summary": "ok", "verified": "True",
        "category": "Books", "reviewYear": 2014, "overall": [1, 5, 3, 4]}),
        index=False, quoting=csv.QUOTE_NONNUMERIC)
    _write(root / "amazon_v2.1/splits/user.csv", pd.DataFrame({"split": [0, 1, 0, 3]}), index=False)
    identities = {f: [0.0] * 6 for f in P.CIVIL_IDENTITY_FIELDS}
    identities["male"] = [1.0, 1.0, 0.0, 0.0, 1.0, 0.0]
    identities["black"] = [1.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    _write(root / "civilcomments_v1.0/all_data_with_identities.csv", pd.DataFrame({
        "comment_text": "hi", "toxicity": [0.9, 0.1, 0.8, 0.0, 0.2, 0.7],
        "split": ["train", "train", "train", "val", "test", "train"], **identities,
        **{f: 0.0 for f in ("identity_any", "severe_toxicity", "obscene", "threat", "insult",
                            "identity_attack", "sexual_explicit")}}))


@pytest.fixture(scope="module")
def wilds_datasets(tmp_path_factory):
    """The real wilds 2.0 dataset classes built on fabricated metadata files."""
    from wilds.datasets.amazon_dataset import AmazonDataset
    from wilds.datasets.camelyon17_dataset import Camelyon17Dataset
    from wilds.datasets.civilcomments_dataset import CivilCommentsDataset
    from wilds.datasets.fmow_dataset import FMoWDataset
    from wilds.datasets.iwildcam_dataset import IWildCamDataset
    from wilds.datasets.poverty_dataset import PovertyMapDataset

    root = tmp_path_factory.mktemp("wilds")
    _fabricate(root)
    classes = {"camelyon17": Camelyon17Dataset, "fmow": FMoWDataset, "iwildcam": IWildCamDataset,
               "poverty": PovertyMapDataset, "amazon": AmazonDataset, "civilcomments": CivilCommentsDataset}
    # pandas 3 infers a str dtype that CivilComments cannot write its integer split ids into.
    with pd.option_context("future.infer_string", False):
        return {name: cls(root_dir=str(root), **P.get_preset(name).dataset_kwargs)
                for name, cls in classes.items()}


@pytest.mark.parametrize("name", NAMES)
def test_groupby_fields_are_metadata_fields_of_the_wilds_class(name, wilds_datasets):
    dataset = wilds_datasets[name]
    assert set(P.get_preset(name).groupby_fields) <= set(dataset.metadata_fields)
    domains = P.fish_domains(name, dataset.metadata_array, dataset.metadata_fields)
    assert domains and sum(len(d) for d in domains) >= len(dataset)  # every row is in a domain


def test_fmow_domains_are_region_year_pairs(wilds_datasets):
    ds = wilds_datasets["fmow"]
    domains = P.fish_domains("fmow", ds.metadata_array, ds.metadata_fields)
    assert sorted(len(d) for d in domains) == [1] * 5  # 5 rows (the "seq" row dropped), all distinct


def test_civilcomments_domains_are_identity_or_none_times_y(wilds_datasets):
    ds = wilds_datasets["civilcomments"]
    # wilds 2.0 appends from_source_domain: the official metadata[:, -1] is no longer y.
    assert ds.metadata_fields[-1] == "from_source_domain"
    domains = P.fish_domains("civilcomments", ds.metadata_array, ds.metadata_fields)
    # toxic y = [1, 0, 1, 0, 0, 1]; male rows 0,1,4; black rows 0,5; none rows 2,3.
    assert [d.tolist() for d in domains] == [[3], [2], [1, 4], [0], [0, 5]]  # empty groups dropped


def test_a_real_distilbert_runs_through_the_wrappers_and_a_fish_step(tmp_path):
    """Real Hugging Face classes, nothing downloaded: a tokenizer from a vocab file written
    here, and a small DistilBERT with random weights (the presets' wrapper classes around them)."""
    transformers = pytest.importorskip("transformers", reason="the `text` extra (transformers)")
    from gradmatch.fish import Fish
    from gradmatch.losses import cross_entropy_loss
    from gradmatch.wilds.models import DistilBertClassifier

    words = ["the", "comment", "is", "kind", "rude", "very", "not", "a"]
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words) + "\n")
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words
    tokenizer = transformers.DistilBertTokenizerFast(vocab={w: i for i, w in enumerate(tokens)})
    if tokenizer("the")["input_ids"][1] != 5:  # transformers 4 reads a vocab file instead
        tokenizer = transformers.DistilBertTokenizerFast(vocab_file=str(vocab))
    tokenize = BertTokenize(tokenizer, 12)
    x = tokenize("the comment is very kind")
    assert x.shape == (12, 2) and x.dtype == torch.long
    ids, mask = x[:, 0].tolist(), x[:, 1].tolist()
    assert ids[:7] == [2, 5, 6, 7, 10, 8, 3] and mask == [1] * 7 + [0] * 5  # [CLS] ... [SEP] [PAD]

    torch.manual_seed(0)
    config = transformers.DistilBertConfig(vocab_size=len(words) + 5, dim=16, n_layers=2, n_heads=2,
                                           hidden_dim=32, max_position_embeddings=16, num_labels=2)
    model = DistilBertClassifier(transformers.DistilBertForSequenceClassification(config))
    texts = [["the comment is kind", "a very kind comment"], ["the comment is rude", "not kind"]]
    batches = [(torch.stack([tokenize(t) for t in pair]), torch.tensor([0, 1])) for pair in texts]
    x = batches[0][0]
    model.eval()  # (no dropout) the wrapper feeds ids and mask where Hugging Face expects them
    direct = model.model(input_ids=x[..., 0], attention_mask=x[..., 1]).logits
    assert model(x).shape == (2, 2) and torch.equal(model(x), direct)
    model.train()
    before = [p.detach().clone() for p in model.parameters()]
    fish = Fish(model, functools.partial(torch.optim.Adam, lr=1e-3), meta_lr=0.5,
                loss_fn=cross_entropy_loss, shuffle_domains=False)
    stats = fish.step(batches, track_gip=True)
    assert np.isfinite(stats["loss"]) and np.isfinite(stats["gip"])
    moved = [not torch.equal(a, b) for a, b in zip(before, model.parameters())]
    assert sum(moved) > 0.9 * len(moved)  # (the unused position rows aside) the network trained
    # the preset's own builder, from scratch: a default-size DistilBERT in the same wrapper
    full = P.build_model("civilcomments", 2, pretrained=False)
    assert isinstance(full, DistilBertClassifier) and full(batches[0][0]).shape == (2, 2)
