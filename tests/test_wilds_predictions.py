"""gradmatch.wilds.predictions: evaluate.py's file layout, and scores equal to dataset.eval.

Datasets are real WILDS classes on fabricated files (helpers from test_wilds_compat.py). The last
test runs the official ``examples/evaluate.py`` from a WILDS source checkout, found through
``$WILDS_DIR``, ``~/.cache/gradmatch-adios/upstream/wilds`` or ``~/.cache/gradmatch/upstream/wilds``.
"""
import json
import os
import subprocess
import sys
from ast import literal_eval
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from test_wilds_compat import make_camelyon17, make_civilcomments, noisy_predictions
from wilds.common.grouper import CombinatorialGrouper
from wilds.common.metrics.all_metrics import Accuracy
from wilds.datasets.wilds_dataset import WILDSDataset

from gradmatch.wilds.compat import get_wilds_dataset
from gradmatch.wilds.predictions import (
    evaluate_predictions,
    prediction_path,
    read_predictions,
    replicate_name,
    required_replicates,
    write_predictions,
)


def make_poverty(root, rows_per_country=170, seed=0):
    """``poverty_v1.1/dhs_metadata.csv``; enough rows that every fold's train split is non-empty."""
    from wilds.datasets.poverty_dataset import DHS_COUNTRIES

    rng = np.random.default_rng(seed)
    n = len(DHS_COUNTRIES) * rows_per_country
    folder = root / "poverty_v1.1"
    folder.mkdir(parents=True)
    pd.DataFrame({"country": np.repeat(DHS_COUNTRIES, rows_per_country), "urban": rng.integers(0, 2, n),
                  "wealthpooled": rng.normal(size=n)}).to_csv(folder / "dhs_metadata.csv", index=False)
    (folder / "RELEASE_v1.1.txt").write_text("fabricated for tests\n")


class ToyShapes(WILDSDataset):
    """A non-benchmark WILDSDataset: 90 points, 3 classes, 4 domains; acc per domain."""
    _dataset_name = "toyshapes"

    def __init__(self, root):
        self._data_dir = str(root)
        self._split_scheme = "official"
        self._split_array = np.repeat([0, 1, 2], 30)
        self._y_array = torch.arange(90) % 3
        self._y_size, self._n_classes = 1, 3
        self._metadata_fields = ["domain", "y"]
        self._metadata_array = torch.stack([torch.arange(90) // 7 % 4, self._y_array], dim=1)
        self._eval_grouper = CombinatorialGrouper(self, ["domain"])
        super().__init__(str(root), False, "official")

    def eval(self, y_pred, y_true, metadata, prediction_fn=None):
        return self.standard_group_eval(Accuracy(prediction_fn=prediction_fn), self._eval_grouper,
                                        y_pred, y_true, metadata)


def predict(dataset, split, seed):
    """Plausible predictions for a split: noisy labels, or for poverty's (N, 1) floats y + noise."""
    y = dataset.get_subset(split).y_array
    if y.is_floating_point():
        return y + 0.5 * torch.randn(y.shape, generator=torch.Generator().manual_seed(seed))
    return noisy_predictions(y, torch.full(y.shape, 0.05 + 0.03 * (seed % 5)), seed)


def write_all(preds_dir, name, root, replicates=None):
    """Write predictions for every non-train split and replicate; returns {(split, rep): tensor}."""
    written = {}
    for i, replicate in enumerate(replicates or required_replicates(name)):
        fold = {"fold": replicate[-1]} if name == "poverty" else {}
        dataset = get_wilds_dataset(name, root, **fold)
        for j, split in enumerate(s for s in dataset.split_dict if s != "train"):
            written[split, replicate] = predict(dataset, split, seed=10 * i + j)
            write_predictions(preds_dir, name, split, replicate, written[split, replicate])
    return written


@pytest.fixture
def camelyon(tmp_path):
    make_camelyon17(tmp_path / "data")
    return tmp_path / "data", tmp_path / "preds"


def test_replicates_follow_evaluate_py():
    assert replicate_name("camelyon17", 7) == "seed:7"
    assert replicate_name("poverty", "C") == "fold:C"
    with pytest.raises(ValueError, match="fold"):
        replicate_name("poverty", 0)
    assert required_replicates("camelyon17") == [f"seed:{i}" for i in range(10)]
    assert required_replicates("civilcomments") == [f"seed:{i}" for i in range(5)]
    assert required_replicates("poverty") == ["fold:A", "fold:B", "fold:C", "fold:D", "fold:E"]
    assert required_replicates("fmow") == required_replicates("toyshapes") == ["seed:0", "seed:1", "seed:2"]


def test_prediction_path_matches_the_evaluate_py_pattern(tmp_path):
    path = prediction_path(tmp_path, "camelyon17", "id_val", "seed:3")
    assert path.parent == tmp_path / "camelyon17"
    assert path.name == "camelyon17_split:id_val_seed:3_epoch:best_pred.csv"
    assert path.name.startswith("camelyon17_split:id_val_seed:3") and path.suffix == ".csv"
    with pytest.raises(ValueError, match="replicate_name"):
        prediction_path(tmp_path, "camelyon17", "val", "3")


def test_write_read_round_trip_one_literal_per_line(tmp_path):
    labels = torch.tensor([0, 1, 1, 0, 2])
    path = write_predictions(tmp_path, "fmow", "test", "seed:0", labels)
    assert path.read_text() == "0\n1\n1\n0\n2\n"
    assert torch.equal(read_predictions(path), labels)

    values = torch.randn(6, 1, generator=torch.Generator().manual_seed(0))  # float32, poverty-like
    path = write_predictions(tmp_path, "poverty", "val", "fold:A", values)
    lines = path.read_text().splitlines()
    assert len(lines) == 6 and all(isinstance(literal_eval(line), float) for line in lines)
    back = read_predictions(path)
    assert back.dtype == torch.float64 and torch.equal(back.float(), values[:, 0])  # exact for float32

    rows = np.array([[0.25, 0.5], [1.0, 2.0]])
    path = write_predictions(tmp_path, "ogb-molpcba", "test", "seed:0", rows)
    assert path.read_text() == "0.25,0.5\n1.0,2.0\n"
    assert torch.equal(read_predictions(path), torch.from_numpy(rows))

    with pytest.raises(ValueError, match="non-finite"):
        write_predictions(tmp_path, "poverty", "test", "fold:A", torch.tensor([1.0, float("nan")]))


def test_overwrite_is_refused_unless_asked(tmp_path):
    path = write_predictions(tmp_path, "fmow", "val", "seed:1", torch.tensor([1, 2]))
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_predictions(tmp_path, "fmow", "val", "seed:1", torch.tensor([3, 4]))
    assert path.read_text() == "1\n2\n"
    write_predictions(tmp_path, "fmow", "val", "seed:1", torch.tensor([3, 4]), overwrite=True)
    assert path.read_text() == "3\n4\n"
    with pytest.raises(FileExistsError, match="exactly one file"):  # evaluate.py would pick either
        write_predictions(tmp_path, "fmow", "val", "seed:1", torch.tensor([3, 4]), suffix="epoch:last_pred")
    write_predictions(tmp_path, "fmow", "val", "seed:10", torch.tensor([5, 6]))  # seed:1 is a prefix


def test_evaluate_camelyon17_equals_direct_eval(camelyon, tmp_path):
    root, preds = camelyon
    written = write_all(preds, "camelyon17", root)
    assert len(list((preds / "camelyon17").iterdir())) == 30  # 3 non-train splits x 10 seeds
    out = evaluate_predictions(preds, "camelyon17", root, output_dir=tmp_path / "out")
    assert out["replicates"] == required_replicates("camelyon17")

    dataset = get_wilds_dataset("camelyon17", root)
    for split in ["id_val", "test", "val"]:
        subset = dataset.get_subset(split)
        direct = [dataset.eval(written[split, r], subset.y_array, subset.metadata_array)[0]["acc_avg"]
                  for r in out["replicates"]]
        assert [out["per_replicate"][split][r]["acc_avg"] for r in out["replicates"]] == direct
        assert out["results"][split] == {"acc_avg_std": pytest.approx(np.std(direct, ddof=1), abs=1e-15),
                                         "acc_avg": pytest.approx(np.mean(direct), abs=1e-15)}
        assert len(set(direct)) > 1  # the replicates really differ
    assert json.loads((tmp_path / "out" / "camelyon17_results.json").read_text()) == out["results"]


def test_missing_files_are_all_listed_or_skipped_with_allow_partial(camelyon):
    root, preds = camelyon
    write_all(preds, "camelyon17", root)
    for split, seed in [("test", 3), ("val", 7)]:
        prediction_path(preds, "camelyon17", split, f"seed:{seed}").unlink()
    with pytest.raises(FileNotFoundError) as info:
        evaluate_predictions(preds, "camelyon17", root)
    assert "camelyon17_split:test_seed:3_*.csv" in str(info.value)
    assert "camelyon17_split:val_seed:7_*.csv" in str(info.value)

    with pytest.warns(UserWarning, match="seed:3"):
        out = evaluate_predictions(preds, "camelyon17", root, allow_partial=True)
    assert out["replicates"] == [f"seed:{i}" for i in range(10) if i not in (3, 7)]

    single = evaluate_predictions(preds, "camelyon17", root, replicates=["seed:0"])
    assert single["replicates"] == ["seed:0"]
    assert single["results"]["test"]["acc_avg"] == out["per_replicate"]["test"]["seed:0"]["acc_avg"]
    assert np.isnan(single["results"]["test"]["acc_avg_std"])
    with pytest.raises(FileNotFoundError):
        evaluate_predictions(preds, "camelyon17", root, replicates=["seed:3"], allow_partial=True)


def test_wrong_length_and_missing_dataset_are_reported_clearly(camelyon, tmp_path):
    root, preds = camelyon
    write_all(preds, "camelyon17", root)
    write_predictions(preds, "camelyon17", "val", "seed:0", torch.tensor([0, 1]), overwrite=True)
    with pytest.raises(ValueError, match=r"seed:0_epoch:best_pred.csv has 2 predictions"):
        evaluate_predictions(preds, "camelyon17", root)
    with pytest.raises(FileNotFoundError, match="--download"):
        evaluate_predictions(preds, "camelyon17", tmp_path / "elsewhere")
    with pytest.raises(FileNotFoundError, match="no prediction folder"):
        evaluate_predictions(tmp_path / "elsewhere", "camelyon17", root)


def test_poverty_is_scored_per_fold(tmp_path):
    make_poverty(tmp_path / "data")
    root, preds = tmp_path / "data", tmp_path / "preds"
    written = write_all(preds, "poverty", root)
    out = evaluate_predictions(preds, "poverty", root)
    assert out["replicates"] == required_replicates("poverty")
    for replicate in out["replicates"]:
        dataset = get_wilds_dataset("poverty", root, fold=replicate[-1])
        for split in ["id_val", "id_test", "val", "test"]:
            subset = dataset.get_subset(split)
            y_pred = read_predictions(prediction_path(preds, "poverty", split, replicate)).unsqueeze(-1)
            direct = dataset.eval(y_pred, subset.y_array, subset.metadata_array)[0]
            ours = out["per_replicate"][split][replicate]
            assert ours == {"r_wg": direct["r_wg"], "r_all": direct["r_all"]}
            original = dataset.eval(written[split, replicate], subset.y_array, subset.metadata_array)[0]
            assert ours["r_all"] == pytest.approx(original["r_all"], rel=1e-5)


def test_non_benchmark_dataset_object_with_custom_metrics(tmp_path):
    dataset = ToyShapes(tmp_path)
    predictions = {}
    for seed, replicate in enumerate(required_replicates("toyshapes")):
        for split in ["val", "test"]:
            predictions[split, replicate] = noisy_predictions(dataset.get_subset(split).y_array, [0.3] * 30, seed)
            write_predictions(tmp_path / "preds", "toyshapes", split, replicate, predictions[split, replicate])
    with pytest.raises(ValueError, match="metrics="):
        evaluate_predictions(tmp_path / "preds", dataset=dataset)
    out = evaluate_predictions(tmp_path / "preds", dataset=dataset, metrics=["acc_avg", "acc_wg"])
    for (split, replicate), y_pred in predictions.items():
        subset = dataset.get_subset(split)
        direct = dataset.eval(y_pred, subset.y_array, subset.metadata_array)[0]
        assert out["per_replicate"][split][replicate] == {"acc_avg": direct["acc_avg"], "acc_wg": direct["acc_wg"]}


def _wilds_checkout():
    candidates = [os.environ.get("WILDS_DIR"), Path.home() / ".cache/gradmatch-adios/upstream/wilds",
                  Path.home() / ".cache/gradmatch/upstream/wilds"]
    return next((Path(c) for c in candidates if c and (Path(c) / "examples/evaluate.py").is_file()), None)


@pytest.mark.skipif(_wilds_checkout() is None, reason="no WILDS source checkout with examples/evaluate.py "
                    "in $WILDS_DIR or ~/.cache/gradmatch-adios/upstream/wilds")
def test_official_evaluate_py_reads_our_files_and_agrees(tmp_path):
    makers = {"camelyon17": make_camelyon17, "civilcomments": make_civilcomments, "poverty": make_poverty}
    root, preds, official = tmp_path / "data", tmp_path / "preds", tmp_path / "official"
    official.mkdir()  # evaluate.py does not create its output folder
    script = _wilds_checkout() / "examples/evaluate.py"
    runs = []
    for name, make in makers.items():
        make(root)
        write_all(preds, name, root)
        runs.append([str(script), str(preds / name), str(official), "--dataset", name, "--root_dir", str(root)])
    # One interpreter for the three runs (imports dominate). evaluate.py reaches torch_scatter
    # through dataset.eval and builds CivilComments, hence the two compat fixes.
    wrapper = ("import json, runpy, sys\n"
               "sys.modules['outdated'] = None  # wilds then skips its PyPI version-check thread\n"
               "from gradmatch.wilds.compat import apply_compat, pandas_legacy_strings\n"
               "apply_compat()\n"
               "for argv in json.loads(sys.argv[1]):\n"
               "    sys.argv = argv\n"
               "    with pandas_legacy_strings():\n"
               "        runpy.run_path(sys.argv[0], run_name='__main__')\n")
    run = subprocess.run([sys.executable, "-c", wrapper, json.dumps(runs)], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    for name in makers:
        expected = json.loads((official / f"{name}_results.json").read_text())
        assert evaluate_predictions(preds, name, root)["results"] == expected
