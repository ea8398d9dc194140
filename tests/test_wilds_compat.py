"""gradmatch.wilds.compat on real WILDS dataset classes built from small fabricated files.

The ``make_*`` helpers are also used by test_wilds_predictions.py.
"""
import sys
import types
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from gradmatch.wilds import compat

IDENTITIES = ["male", "female", "LGBTQ", "christian", "muslim", "other_religions", "black", "white"]
AUXILIARY = ["identity_any", "severe_toxicity", "obscene", "threat", "insult", "identity_attack", "sexual_explicit"]


def make_camelyon17(root, rows_per_slide=12, seed=0):
    """``camelyon17_v1.0/``: 10 slides, slides 2c and 2c+1 in hospital c (1 = OOD val, 2 = test).

    Every third row of the train hospitals is marked id_val. Returns the metadata frame.
    """
    rng = np.random.default_rng(seed)
    rows = [dict(patient=f"{slide:03d}", node=slide % 5, x_coord=i, y_coord=2 * i,
                 tumor=int(rng.integers(2)), slide=slide, center=slide // 2, split=int(i % 3 == 0))
            for slide in range(10) for i in range(rows_per_slide)]
    folder = root / "camelyon17_v1.0"
    folder.mkdir(parents=True)
    df = pd.DataFrame(rows)
    df.to_csv(folder / "metadata.csv")
    (folder / "RELEASE_v1.0.txt").write_text("fabricated for tests\n")
    return df


def make_civilcomments(root, rows_per_split=120, seed=0):
    """``civilcomments_v1.0/all_data_with_identities.csv`` with train/val/test rows. Returns the frame."""
    rng = np.random.default_rng(seed)
    n = 3 * rows_per_split
    df = pd.DataFrame({"comment_text": [f"comment number {i}" for i in range(n)],
                       "split": np.repeat(["train", "val", "test"], rows_per_split),
                       "toxicity": rng.uniform(size=n)})
    for column in IDENTITIES + AUXILIARY:
        df[column] = rng.choice([0.0, 0.2, 0.6, 1.0], size=n)
    folder = root / "civilcomments_v1.0"
    folder.mkdir(parents=True)
    df.to_csv(folder / "all_data_with_identities.csv")
    (folder / "RELEASE_v1.0.txt").write_text("fabricated for tests\n")
    return df


def noisy_predictions(y, flip_prob, seed):
    """Labels ``y`` (N,) with entry i flipped (binary) with probability ``flip_prob[i]``."""
    g = torch.Generator().manual_seed(seed)
    flip = torch.rand(len(y), generator=g) < torch.as_tensor(flip_prob, dtype=torch.float32)
    return torch.where(flip, 1 - y, y)


def default_string_dtype():
    """The dtype pandas infers for text: ``str`` on pandas 3, ``object`` before."""
    return pd.StringDtype(na_value=np.nan) if int(pd.__version__.split(".")[0]) >= 3 else np.dtype(object)


@pytest.fixture
def standin(monkeypatch):
    """The pure-torch ``torch_scatter``, even where the compiled package is installed."""
    monkeypatch.setitem(sys.modules, "torch_scatter", None)  # makes `import torch_scatter` fail
    assert compat.ensure_torch_scatter() is True
    return sys.modules["torch_scatter"]


def test_standin_scatter_matches_numpy_per_group_including_empty_groups(standin):
    rng = np.random.default_rng(0)
    g = np.array([0, 3, 3, 5, 0, 5, 5, 3, 0, 0])  # groups 1, 2, 4, 6, 7 are empty
    v = rng.normal(size=(10, 2))
    for reduce, fn in [("mean", np.mean), ("sum", np.sum), ("max", np.max), ("min", np.min)]:
        expected = np.array([fn(v[g == k], axis=0) if (g == k).any() else np.zeros(2) for k in range(8)])
        # 1-D index broadcast along dim 0 of a (10, 2) source, and per column along dim -1 of (2, 10).
        got = standin.scatter(src=torch.from_numpy(v), index=torch.from_numpy(g), dim=0, dim_size=8, reduce=reduce)
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=0)
        got_t = standin.scatter(torch.from_numpy(v.T.copy()), torch.from_numpy(g), dim_size=8, reduce=reduce)
        np.testing.assert_allclose(got_t.numpy(), expected.T, rtol=1e-12, atol=0)
    assert standin.scatter(torch.ones(4), torch.tensor([0, 0, 2, 2])).shape == (3,)  # dim_size = max + 1
    assert torch.equal(standin.scatter(torch.ones(0), torch.zeros(0, dtype=torch.long), dim_size=3), torch.zeros(3))


def test_wilds_avg_over_groups_runs_on_the_standin(standin):
    from wilds.common.utils import avg_over_groups

    g = torch.tensor([2, 2, 0, 4, 4, 4])
    v = torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0, 0.0])
    avgs, counts = avg_over_groups(v, g, n_groups=6)
    assert avgs.tolist() == pytest.approx([1.0, 0.0, 0.5, 0.0, 2 / 3, 0.0])
    assert counts.tolist() == [1, 0, 2, 0, 3, 0]


def test_ensure_torch_scatter_is_idempotent_and_leaves_a_real_package_alone(standin, monkeypatch):
    assert compat.ensure_torch_scatter() is True
    compat.apply_compat()
    assert sys.modules["torch_scatter"] is standin
    real = types.ModuleType("torch_scatter")
    monkeypatch.setitem(sys.modules, "torch_scatter", real)
    assert compat.ensure_torch_scatter() is False
    assert sys.modules["torch_scatter"] is real


def test_camelyon17_group_eval_equals_hand_computation(tmp_path):
    df = make_camelyon17(tmp_path)
    dataset = compat.get_wilds_dataset("camelyon17", tmp_path)
    assert list(dataset.split_dict) == ["train", "id_val", "test", "val"]
    for split, rows in [("id_val", (df.center.isin([0, 3, 4])) & (df.split == 1)), ("test", df.center == 2)]:
        subset = dataset.get_subset(split)
        truth = df[rows]
        assert subset.y_array.tolist() == truth.tumor.tolist()
        y_pred = noisy_predictions(subset.y_array, 0.1 * (truth.slide.to_numpy() % 4), seed=1)
        results, _ = dataset.eval(y_pred, subset.y_array, subset.metadata_array)
        correct = (y_pred.numpy() == truth.tumor.to_numpy())
        per_slide = {s: correct[truth.slide.to_numpy() == s].mean() for s in sorted(set(truth.slide))}
        assert results["acc_avg"] == pytest.approx(correct.mean(), abs=1e-6)
        assert results["acc_wg"] == pytest.approx(min(per_slide.values()), abs=1e-6)
        for slide in range(10):  # slides outside the split are empty groups: count 0, acc 0
            assert results[f"count_slide:{slide}"] == (truth.slide == slide).sum()
            assert results[f"acc_slide:{slide}"] == pytest.approx(per_slide.get(slide, 0.0), abs=1e-6)


def test_civilcomments_needs_the_pandas_fix_and_evaluates_like_by_hand(tmp_path):
    df = make_civilcomments(tmp_path)
    from wilds.datasets.civilcomments_dataset import CivilCommentsDataset

    if int(pd.__version__.split(".")[0]) >= 3:
        with pytest.raises(TypeError, match="Invalid value"):
            CivilCommentsDataset(root_dir=str(tmp_path))
    dataset = compat.get_wilds_dataset("civilcomments", tmp_path)
    assert pd.Series(["a"]).dtype == default_string_dtype()  # the pandas option was restored
    assert [len(dataset.get_subset(s)) for s in ["train", "val", "test"]] == [120, 120, 120]
    assert dataset.get_input(250) == "comment number 250"

    subset = dataset.get_subset("test")
    truth = df[df.split == "test"]
    y_true = (truth.toxicity.to_numpy() >= 0.5).astype(int)
    y_pred = noisy_predictions(subset.y_array, truth.male.to_numpy() * 0.4 + 0.05, seed=2)
    results, _ = dataset.eval(y_pred, subset.y_array, subset.metadata_array)
    correct = y_pred.numpy() == y_true
    group_accs = []
    for identity in IDENTITIES:
        for y in (0, 1):
            rows = (truth[identity].to_numpy() >= 0.5) & (y_true == y)
            assert rows.any()
            group_accs.append(correct[rows].mean())
    assert results["acc_avg"] == pytest.approx(correct.mean(), abs=1e-6)
    assert results["acc_wg"] == pytest.approx(min(group_accs), abs=1e-6)


def test_pandas_legacy_strings_is_scoped_and_quiet():
    before = default_string_dtype()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with compat.pandas_legacy_strings():
            assert pd.Series(["a"]).dtype == object
    assert pd.Series(["a"]).dtype == before


@pytest.mark.parametrize("partial", [False, True])
def test_missing_dataset_gives_one_clear_error(tmp_path, partial):
    if partial:  # folder present but without RELEASE_v1.0.txt: WILDS treats it as not downloaded
        (tmp_path / "camelyon17_v1.0").mkdir()
    with pytest.raises(FileNotFoundError) as info:
        compat.get_wilds_dataset("camelyon17", tmp_path, download=False)
    message = str(info.value)
    assert str(tmp_path / "camelyon17_v1.0") in message
    assert "RELEASE_v1.0.txt" in message and "--download" in message and "gradmatch train" in message
    assert info.value.__cause__ is None and info.value.__context__ is None


def test_file_missing_inside_a_present_dataset_keeps_the_specific_error(tmp_path):
    make_camelyon17(tmp_path)
    (tmp_path / "camelyon17_v1.0" / "metadata.csv").unlink()
    with pytest.raises(FileNotFoundError, match="metadata.csv"):
        compat.get_wilds_dataset("camelyon17", tmp_path)


def test_unknown_dataset_name_lists_the_supported_ones(tmp_path):
    with pytest.raises(ValueError, match="camelyon17.*civilcomments"):
        compat.get_wilds_dataset("camelyon", tmp_path)
    assert not any(tmp_path.iterdir())
