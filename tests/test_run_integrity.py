"""A ``gradmatch train`` run can be trusted and never dead-ends (issue 15): its results are tied
to their data (prediction manifests checked by ``gradmatch evaluate``), it records what it ran,
a damaged checkpoint falls back to the previous one, a finished run is extended as one longer
run, a folder left before the first checkpoint is reused, and a failed write says what was kept.

Every run here is CdSprites-N at toy size (a few seconds on one thread)."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from test_wilds_runner import (
    TINY,
    assert_bitwise_equal,
    cli,
    final_model,
    read_log,
    snapshot,
    train_args,
    without_timing,
)

from gradmatch.wilds.cdsprites import CdSpritesNDataset
from gradmatch.wilds.checkpoint import CheckpointDamaged, load_checkpoint
from gradmatch.wilds.manifest import labels_digest, manifest_path
from gradmatch.wilds.predictions import evaluate_predictions

SMALL = {**TINY, "num_domains": 5, "num_val": 96, "num_test": 96}


def run_args(out, *extra, kwargs=SMALL):
    args = train_args(out, *map(str, extra))
    args[args.index("--dataset-kwargs") + 1] = json.dumps(kwargs)
    return args


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    """Runs of seeds 0 and 1 on CdSprites-N (data realisation = seed) and their merged predictions."""
    root = tmp_path_factory.mktemp("seeds")
    for seed in (0, 1):
        assert_cli_ok(run_args(root / f"s{seed}", "--seed", seed, "--max-steps", 12, "--eval-every", 4))
    merged = root / "merged"
    for seed in (0, 1):
        shutil.copytree(root / f"s{seed}" / "predictions", merged, dirs_exist_ok=True)
    return root, merged


def assert_cli_ok(args):
    from gradmatch.cli import main

    assert main([str(a) for a in args]) == 0


# ------------------------------------------------------------------ results tied to their data
def test_evaluate_scores_each_seed_on_the_data_it_was_trained_on(seeds):
    root, merged = seeds
    scored = evaluate_predictions(merged, "cdsprites", allow_partial=True, metrics=["acc_avg", "acc_wg"])
    assert scored["replicates"] == ["seed:0", "seed:1"]
    for seed in (0, 1):
        summary = json.loads((root / f"s{seed}" / "summary.json").read_text())
        for split in ("id_val", "val", "test"):
            for metric in ("acc_avg", "acc_wg"):
                assert scored["per_replicate"][split][f"seed:{seed}"][metric] == summary["metrics"][split][metric]
    manifest = json.loads(manifest_path(merged, "cdsprites", "seed:1").read_text())
    assert manifest["dataset_kwargs"] == {**SMALL, "data_seed": 1} and manifest["version"] == "1.0"
    data = CdSpritesNDataset(seed=1, **SMALL)
    assert manifest["splits"]["test"] == {"size": 96, "labels_sha256": labels_digest(
        data.get_subset("test").y_array)}
    assert manifest["settings"]["max_steps"] == 12 and manifest["provenance"]["package"]["version"]


def test_evaluate_refuses_kwargs_that_contradict_the_manifest(seeds, capsys):
    _, merged = seeds
    code, out, err = cli(capsys, "evaluate", merged, "--dataset", "cdsprites", "--allow-partial",
                         "--dataset-kwargs", '{"num_domains": 7}')
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "num_domains=7 differs from 5" in err and "manifest.json" in err


def test_evaluate_refuses_data_that_differ_from_the_manifest(seeds, tmp_path):
    _, merged = seeds
    folder = shutil.copytree(merged, tmp_path / "preds")
    path = manifest_path(folder, "cdsprites", "seed:1")
    manifest = json.loads(path.read_text())
    manifest["dataset_kwargs"]["data_seed"] = 5  # another realisation of the same sizes
    path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"split 'id_val''s labels \(sha256 \w+\) differ from \w+ in"):
        evaluate_predictions(folder, "cdsprites", allow_partial=True)


def test_predictions_without_a_manifest_need_their_data_realisation(seeds, tmp_path):
    root, merged = seeds
    folder = shutil.copytree(merged, tmp_path / "leaderboard")
    for seed in (0, 1):
        manifest_path(folder, "cdsprites", f"seed:{seed}").unlink()
    with pytest.raises(ValueError, match="data_seed"):
        evaluate_predictions(folder, "cdsprites", allow_partial=True, dataset_kwargs=SMALL)
    scored = evaluate_predictions(folder, "cdsprites", replicates=["seed:1"],
                                  dataset_kwargs={**SMALL, "data_seed": 1})
    summary = json.loads((root / "s1" / "summary.json").read_text())
    assert scored["results"]["test"]["acc_avg"] == summary["metrics"]["test"]["acc_avg"]
    name = "cdsprites_split:{}_seed:1_epoch:best_pred.csv"
    shutil.copy(folder / "cdsprites" / name.format("test"), folder / "cdsprites" / name.format("id_val"))
    with pytest.raises(ValueError, match="has 96 predictions; split 'id_val' has 32 examples"):
        evaluate_predictions(folder, "cdsprites", replicates=["seed:1"],
                             dataset_kwargs={**SMALL, "data_seed": 1})


# ------------------------------------------------------------------ what a run records
def test_results_are_strict_json_and_record_the_resolved_settings(seeds):
    root, _ = seeds
    config = json.loads((root / "s1" / "config.json").read_text())
    summary_text = (root / "s1" / "summary.json").read_text()
    assert "NaN" not in summary_text and "Infinity" not in summary_text
    summary = json.loads(summary_text)
    for key in ("lr", "batch_size", "meta_lr", "epochs", "meta_steps", "optimizer", "selection_metric"):
        assert config[key] is not None and summary["settings"][key] == config[key], key
    assert config["meta_steps"] == SMALL["num_domains"] and config["batch_size"] == 8
    prov = summary["provenance"]
    assert prov["libraries"]["torch"] and prov["libraries"]["wilds"] == "2.0.0"
    assert prov["engine"] == {"device": "cpu", "world_size": 1, "precision": "32-true"}


# ------------------------------------------------------------------ damaged checkpoints
DAMAGE = {"truncated": lambda b: b[: len(b) // 2], "empty": lambda b: b"",
          "garbled": lambda b: b[:2000] + bytes(x ^ 0xFF for x in b[2000:2200]) + b[2200:]}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "run"
    assert_cli_ok(run_args(out, "--max-steps", 10, "--checkpoint-every", 3, "--eval-every", 4))
    return out


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_checkpoint_falls_back_to_the_previous_one(damage, reference, tmp_path, capsys):
    out = shutil.copytree(reference, tmp_path / "run")
    (out / "summary.json").unlink()  # killed after the final checkpoint
    ckpt = out / "checkpoint.pt"
    ckpt.write_bytes(DAMAGE[damage](ckpt.read_bytes()))
    with pytest.raises(CheckpointDamaged, match="checkpoint.pt is damaged"):
        load_checkpoint(ckpt)
    assert load_checkpoint(out / "checkpoint.prev.pt")["step"] == 9

    code, _, err = cli(capsys, *run_args(out, "--max-steps", 10, "--checkpoint-every", 3,
                                         "--eval-every", 4, "--resume"))
    assert code == 0, err
    warning = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "checkpoint.pt is damaged" in warning[0]
    assert "resuming from the previous checkpoint" in warning[0] and "checkpoint.prev.pt" in warning[0]
    # step 10 replayed from step 9: the same run as the one that was never damaged
    assert_bitwise_equal(final_model(out), final_model(reference))
    assert without_timing(read_log(out)) == without_timing(read_log(reference))
    assert snapshot(out / "predictions") == snapshot(reference / "predictions")
    assert (json.loads((out / "summary.json").read_text())["metrics"]
            == json.loads((reference / "summary.json").read_text())["metrics"])


def test_two_damaged_checkpoints_give_one_line_and_leave_the_folder(reference, tmp_path, capsys):
    out = shutil.copytree(reference, tmp_path / "run")
    (out / "summary.json").unlink()
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        (out / name).write_bytes(b"not a checkpoint")
    before = snapshot(out)
    code, _, err = cli(capsys, *run_args(out, "--max-steps", 10, "--resume"))
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "checkpoint.pt is damaged" in err and "the previous one is damaged too" in err
    assert "another --out" in err
    assert snapshot(out) == before


# ------------------------------------------------------------------ extending a finished run
@pytest.mark.parametrize("short,long", [(("--max-steps", 13), ("--max-steps", 26)),
                                        (("--epochs", 2), ("--epochs", 3))])
def test_resume_extends_a_finished_run_as_one_longer_run(short, long, tmp_path, capsys):
    common = ("--eval-every", 5, "--checkpoint-every", 7, "--log-every", 2)
    longer = tmp_path / "longer"
    assert_cli_ok(run_args(longer, *long, *common, kwargs=TINY))
    out = tmp_path / "run"
    assert_cli_ok(run_args(out, *short, *common, kwargs=TINY))
    first = json.loads((out / "summary.json").read_text())

    code, _, err = cli(capsys, *run_args(out, *long, *common, "--resume", kwargs=TINY))
    assert code == 0, err
    assert "extending the finished run" in err
    assert_bitwise_equal(final_model(out), final_model(longer))
    assert without_timing(read_log(out)) == without_timing(read_log(longer))
    assert (out / "summary.json").read_text() == (longer / "summary.json").read_text()
    assert snapshot(out / "predictions") == snapshot(longer / "predictions")
    assert first != json.loads((out / "summary.json").read_text())
    resumes = json.loads((out / "config.json").read_text())["resumes"]
    key = long[0].lstrip("-").replace("-", "_")
    assert len(resumes) == 1 and resumes[0]["changed"][key] == [short[1], long[1]]

    code, _, err = cli(capsys, *run_args(out, *long, *common, "--resume", kwargs=TINY))
    assert code == 2 and "nothing to resume" in err and "larger --max-steps or --epochs" in err


# ------------------------------------------------------------------ no dead ends
def test_a_folder_left_before_the_first_checkpoint_is_reused(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = cli(capsys, *run_args(out, "--lr", 1e30, "--max-steps", 10, "--algorithm", "erm"))
    assert code == 1 and "non-finite" in err.lower()
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "log.jsonl"]
    code, _, err = cli(capsys, *run_args(out, "--max-steps", 4, "--log-every", 1, "--resume"))
    assert code == 0, err
    assert "stopped before its first checkpoint (config.json, log.jsonl); starting it again" in err
    train = [r for r in read_log(out) if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3, 4] and {r["phase"] for r in train} == {"fish"}
    assert json.loads((out / "config.json").read_text())["given"]["lr"] is None


def test_a_failed_write_says_what_was_saved_and_the_run_continues(reference, tmp_path, capsys):
    out = shutil.copytree(reference, tmp_path / "run")
    (out / "checkpoint.pt.tmp").mkdir()  # the next checkpoint cannot be written
    args = run_args(out, "--max-steps", 20, "--checkpoint-every", 3, "--eval-every", 4, "--resume")
    code, _, err = cli(capsys, *args)
    assert code == 1 and "Traceback" not in err
    line = [text for text in err.splitlines() if "error:" in text]
    assert len(line) == 1 and "could not write" in line[0] and "checkpoint.pt.tmp" in line[0]
    assert "the checkpoint of step 10" in line[0] and "rerun the same command with --resume" in line[0]
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 10
    (out / "checkpoint.pt.tmp").rmdir()
    code, _, err = cli(capsys, *args)
    assert code == 0, err
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 20
