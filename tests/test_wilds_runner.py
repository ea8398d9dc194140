"""The WILDS training harness (gradmatch.wilds.runner) and the ``gradmatch`` command line.

Everything runs on a tiny CdSprites-N (4 domains of 64 images, 16x16 pixels), a real
``WILDSDataset``: the same grouper, ``dataset.eval`` and prediction files as WILDS benchmarks.
The CLI is called in-process through ``gradmatch.cli.main`` (exit code = its return value), and as
a subprocess where a process has to be killed.
"""
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from gradmatch.cli import main as cli_main
from gradmatch.wilds.cdsprites import CdSpritesNDataset
from gradmatch.wilds.predictions import evaluate_predictions, prediction_path, read_predictions
from gradmatch.wilds.presets import PRESETS
from gradmatch.wilds.runner import RunConfig, train
from gradmatch.wilds.samplers import DomainBatchPlanner, PooledBatchPlanner

TINY = {"num_domains": 4, "per_domain": 64, "num_val": 64, "num_test": 64, "num_id_val": 32,
        "image_size": 16}
EVAL_SPLITS = ["id_val", "val", "test"]
# Fish on TINY with batch 8 per domain and all 4 domains per step: 8 steps per epoch.
FISH_STEPS_PER_EPOCH = 8


# ---------------------------------------------------------------------------------- helpers
def cli(capsys, *args):
    """``gradmatch *args`` in this process: ``(exit code, stdout, stderr)``."""
    try:
        code = cli_main([str(a) for a in args])
    except SystemExit as exit_:  # argparse errors
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def train_args(out, *extra, algorithm="fish"):
    """``gradmatch train`` arguments for a run on TINY (the CLI's own defaults otherwise)."""
    return ["train", "--dataset", "cdsprites", "--dataset-kwargs", json.dumps(TINY),
            "--algorithm", algorithm, "--out", str(out), "--batch-size", "8", "--no-progress",
            *map(str, extra)]


def tiny_config(out, **overrides) -> RunConfig:
    settings = dict(dataset="cdsprites", out_dir=str(out), batch_size=8, progress=False,
                    dataset_kwargs=dict(TINY))
    settings.update(overrides)
    return RunConfig(**settings)


def read_log(out):
    return [json.loads(line) for line in (Path(out) / "log.jsonl").read_text().splitlines()]


def without_timing(records):
    return [{k: v for k, v in r.items() if k != "sec_per_step"} for r in records]


def final_model(out):
    """The learner's model state in ``checkpoint.pt`` (written at the end of every run)."""
    return torch.load(Path(out) / "checkpoint.pt", weights_only=True)["learner"]["model"]


def assert_bitwise_equal(a: dict, b: dict):
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), name


def snapshot(folder):
    """``{relative path: bytes}`` of every file under ``folder``."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def simulate_kill_before_summary(finished, dest):
    """A copy of a finished run as a process killed while writing predictions leaves it: the
    final checkpoint is on disk, ``summary.json`` is not."""
    shutil.copytree(finished, dest)
    (Path(dest) / "summary.json").unlink()
    return Path(dest)


def start_cli(args, log_path):
    """``python -m gradmatch.cli *args`` as a child process on one thread; output to ``log_path``.

    The child starts with Ctrl-C at its default, as from a terminal, even when the tests run in
    a background job (whose children inherit an ignored SIGINT and so never see Ctrl-C)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with open(log_path, "w") as log:
        return subprocess.Popen([sys.executable, "-m", "gradmatch.cli", *args], env=env,
                                stdout=log, stderr=subprocess.STDOUT,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for(path: Path, proc, log_path, timeout=180.0):
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"the run exited ({proc.returncode}) before writing {path.name}:\n"
                        f"{Path(log_path).read_text()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no {path.name} after {timeout} s")
        time.sleep(0.005)


# ---------------------------------------------------------------------------------- samplers
def toy_domains():
    """Five domains (sizes 20, 7, 13, 1, 16) over a shuffled range(57), plus an empty one."""
    perm = torch.from_numpy(np.random.default_rng(0).permutation(57))
    sizes = [20, 7, 13, 1, 16]
    return list(perm.split(sizes)) + [torch.zeros(0, dtype=torch.long)]


@pytest.mark.parametrize("batch_size,meta_steps", [(4, 3), (4, 1), (5, 5), (32, 2)])
def test_domain_batch_plan_is_one_epoch_of_per_domain_batches(batch_size, meta_steps):
    domains = toy_domains()
    members = {int(i): d for d, dom in enumerate(domains) for i in dom}
    planner = DomainBatchPlanner(domains, batch_size, meta_steps, seed=3)
    for epoch in range(3):
        plan = planner.plan(epoch)
        assert len(plan) > 0
        used = {d: [] for d in range(len(domains))}
        for step in plan:
            assert len(step) == meta_steps
            owners = []
            for indices in step:
                assert len(indices) == batch_size, "every batch is full"
                owner = {members[int(i)] for i in indices}
                assert len(owner) == 1, "a batch mixes domains"
                owners.append(owner.pop())
                used[owners[-1]].extend(indices.tolist())
            assert len(set(owners)) == meta_steps, "a step visits a domain twice"
        left = {}
        for d, dom in enumerate(domains):
            total = math.ceil(len(dom) / batch_size)
            taken = used[d]
            assert len(taken) % batch_size == 0 and len(taken) // batch_size <= total
            # A shuffled pass over the domain first; only the last batch is topped up (with
            # examples of the same domain), so nothing repeats before the domain is exhausted.
            fresh = taken[:len(dom)]
            assert len(set(fresh)) == len(fresh)
            if len(taken) // batch_size == total:
                assert set(fresh) == set(dom.tolist())
            left[d] = total - len(taken) // batch_size
        # The epoch ends exactly when fewer than meta_steps domains have batches left (every
        # step above drew meta_steps distinct domains, so it did not end earlier).
        assert sum(n > 0 for n in left.values()) < meta_steps


def test_domain_batch_plan_depends_only_on_seed_and_epoch():
    def flat(plan):
        return [i.tolist() for step in plan for i in step]

    domains = toy_domains()
    a = DomainBatchPlanner(domains, 4, 3, seed=0)
    b = DomainBatchPlanner([d.clone() for d in domains], 4, 3, seed=0)
    assert flat(a.plan(1)) == flat(b.plan(1)) == flat(a.plan(1))
    a.plan(5)  # asking for other epochs in between changes nothing
    assert flat(a.plan(0)) == flat(b.plan(0))
    assert flat(a.plan(0)) != flat(a.plan(1))
    assert flat(a.plan(0)) != flat(DomainBatchPlanner(domains, 4, 3, seed=1).plan(0))


def test_domain_batch_planner_rejects_more_meta_steps_than_domains():
    with pytest.raises(ValueError, match=r"meta_steps=6 .* only 5 non-empty domains; lower --meta-steps"):
        DomainBatchPlanner(toy_domains(), 4, 6, seed=0)
    DomainBatchPlanner(toy_domains(), 4, 5, seed=0)  # the empty domain does not count


def test_each_step_draws_its_domains_uniformly_among_the_live_ones():
    """The official draw (``np.random.choice(live, meta_steps, replace=False)``): over many
    seeds every domain is equally likely to be in the first step, and in the first step of a
    plan whose bigger domains outlast the others."""
    domains = [torch.arange(10 * d, 10 * d + 8) for d in range(5)]  # 5 domains, 2 batches each
    counts = np.zeros(5)
    for seed in range(300):
        first = DomainBatchPlanner(domains, 4, 2, seed=seed).plan(0)[0]
        counts[[int(indices[0]) // 10 for indices in first]] += 1
    # 600 draws, 120 expected per domain; a first-k-live draw gives [300, 300, 0, 0, 0]
    assert counts.sum() == 600 and counts.min() > 85 and counts.max() < 155, counts


@pytest.mark.parametrize("num_examples,batch_size", [(50, 8), (48, 8), (8, 8)])
def test_pooled_batch_plan_is_a_permutation_without_the_last_incomplete_batch(num_examples, batch_size):
    planner = PooledBatchPlanner(num_examples, batch_size, seed=0)
    plan = planner.plan(0)
    assert len(plan) == num_examples // batch_size
    assert all(len(step) == 1 and len(step[0]) == batch_size for step in plan)
    used = np.concatenate([step[0] for step in plan])
    assert len(set(used.tolist())) == len(used) == num_examples - num_examples % batch_size
    assert used.min() >= 0 and used.max() < num_examples
    if num_examples % batch_size == 0:
        assert sorted(used.tolist()) == list(range(num_examples))


def test_pooled_batch_plan_depends_only_on_seed_and_epoch():
    def flat(plan):
        return np.concatenate([s[0] for s in plan]).tolist()

    a, b = PooledBatchPlanner(64, 8, seed=0), PooledBatchPlanner(64, 8, seed=0)
    assert flat(a.plan(2)) == flat(b.plan(2))
    assert flat(a.plan(0)) != flat(a.plan(1))
    assert flat(a.plan(0)) != flat(PooledBatchPlanner(64, 8, seed=1).plan(0))
    with pytest.raises(ValueError, match="fewer than batch size 8; lower --batch-size"):
        PooledBatchPlanner(7, 8, seed=0)


# ---------------------------------------------------------------------------------- a full run
@pytest.fixture(scope="module")
def fish_run(tmp_path_factory):
    """A finished Fish run on TINY: 24 steps (3 epochs), eval every 4 steps, GIP every 5."""
    out = tmp_path_factory.mktemp("fish") / "run"
    cfg = tiny_config(out, max_steps=24, eval_every=4, gip_every=5, log_every=3, meta_lr=2.0,
                      checkpoint_every=10)
    summary = train(cfg)
    return out, cfg, summary


FISH_RUN_TRAIN_STEPS = sorted(set(range(3, 25, 3)) | {1, 6, 11, 16, 21})


def test_fish_run_writes_every_documented_file(fish_run):
    out, cfg, summary = fish_run
    for name in ("config.json", "log.jsonl", "best_model.pt", "checkpoint.pt", "summary.json"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert config["dataset"] == "cdsprites" and config["algorithm"] == "fish"
    # resolved: CdSprites' data realisation (data_seed = --seed) and the preset's values are named
    assert config["dataset_kwargs"] == {**TINY, "data_seed": 0} and config["max_steps"] == 24
    assert config["given"]["dataset_kwargs"] == TINY and config["given"]["lr"] is None
    preset = PRESETS["cdsprites"]
    assert config["lr"] == preset.optimizer_kwargs["lr"] and config["optimizer"] == "adam"
    assert config["meta_steps"] == TINY["num_domains"] and config["epochs"] == preset.epochs
    assert config["inner_optimizer_state"] == preset.inner_optimizer_state
    assert config["provenance"]["package"]["name"] == "gradmatch-adios"
    assert config["provenance"]["libraries"]["torch"] == torch.__version__.split("+")[0] or \
        config["provenance"]["libraries"]["torch"] == torch.__version__
    mechanics = ("out_dir", "checkpoint_every", "progress", "num_workers")  # how, not what
    assert summary["settings"] == {k: v for k, v in config.items()
                                   if k not in ("given", "provenance", "resumes") + mechanics}
    assert json.loads((out / "summary.json").read_text()) == summary
    assert summary["replicate"] == "seed:0" and set(summary["metrics"]) == set(EVAL_SPLITS)

    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert checkpoint["step"] == 24 and checkpoint["learner"]["num_steps"] == 24
    best = torch.load(out / "best_model.pt", weights_only=True)
    assert best["step"] == summary["selected_step"]

    dataset = CdSpritesNDataset(seed=0, **TINY)
    for split in EVAL_SPLITS:
        path = prediction_path(out / "predictions", "cdsprites", split, "seed:0")
        assert path.name == f"cdsprites_split:{split}_seed:0_epoch:best_pred.csv"
        y_pred = read_predictions(path)
        assert y_pred.dtype == torch.int64 and len(y_pred) == len(dataset.get_subset(split))
        assert set(y_pred.tolist()) <= {0, 1}
    assert sorted(p.name for p in (out / "predictions" / "cdsprites").iterdir()) == sorted(
        [f"cdsprites_split:{s}_seed:0_epoch:best_pred.csv" for s in EVAL_SPLITS]
        + ["cdsprites_seed:0_manifest.json"])


def test_fish_run_log_has_train_eval_and_gip_records(fish_run):
    out, _, _ = fish_run
    records = read_log(out)
    assert {r["kind"] for r in records} == {"train", "eval"}
    train_records = [r for r in records if r["kind"] == "train"]
    steps = [r["step"] for r in train_records]
    assert steps == sorted(set(steps))
    for r in train_records:
        assert r["phase"] == "fish" and math.isfinite(r["loss"]) and r["sec_per_step"] > 0
        assert r["epoch"] == (r["step"] - 1) // FISH_STEPS_PER_EPOCH
    # GIP is measured at the weights before the update of steps 1, 6, 11, ... (every 5 updates).
    gip = [r for r in train_records if "gip" in r]
    assert [r["step"] for r in gip] == [1, 6, 11, 16, 21]
    assert all(math.isfinite(r["gip"]) and -1 <= r["gip_cos"] <= 1 for r in gip)
    # log_every=3: a record every third step, and one for every GIP measurement.
    assert steps == FISH_RUN_TRAIN_STEPS

    evals = [r for r in records if r["kind"] == "eval"]
    by_step = {}
    for r in evals:
        by_step.setdefault(r["step"], []).append(r["split"])
        assert set(r["metrics"]) >= {"acc_avg", "acc_wg"}
    assert sorted(by_step) == [4, 8, 12, 16, 20, 24]  # every 4 steps (epoch ends 8, 16, 24 included)
    assert all(sorted(splits) == sorted(EVAL_SPLITS) for splits in by_step.values())


def test_summary_is_the_eval_step_with_the_best_val_accuracy(fish_run):
    out, _, summary = fish_run
    evals = [r for r in read_log(out) if r["kind"] == "eval"]
    val = [(r["step"], r["metrics"]["acc_avg"]) for r in evals if r["split"] == "val"]
    assert len({v for _, v in val}) > 1, "a constant val accuracy would make this test vacuous"
    best = max(v for _, v in val)
    first_best_step = next(s for s, v in val if v == best)  # ties keep the earliest
    assert summary["selection"] == {"split": "val", "metric": "acc_avg", "value": best}
    assert summary["selected_step"] == first_best_step
    # The summary re-evaluates the selected model: the same numbers as at that step.
    for r in evals:
        if r["step"] == first_best_step:
            assert summary["metrics"][r["split"]] == r["metrics"]


def test_model_selection_keeps_the_first_of_equal_scores(tmp_path):
    """A learning rate of 1e-12 leaves the predictions, hence the val scores, equal at every
    evaluation: the earliest evaluated model is kept (a later one only if strictly better)."""
    out = tmp_path / "run"
    summary = train(tiny_config(out, max_steps=12, eval_every=4, lr=1e-12, meta_lr=1e-3))
    scores = [r["metrics"]["acc_avg"] for r in read_log(out)
              if r["kind"] == "eval" and r["split"] == "val"]
    assert len(scores) >= 3 and len(set(scores)) == 1
    assert summary["selected_step"] == 4


def test_prediction_files_score_to_the_summary_metrics(fish_run):
    out, _, summary = fish_run
    dataset = CdSpritesNDataset(seed=0, **TINY)
    with pytest.warns(UserWarning, match=r"scoring replicates \['seed:0'\] only"):
        scored = evaluate_predictions(out / "predictions", dataset=dataset,
                                      metrics=["acc_avg", "acc_wg"], allow_partial=True)
    assert scored["replicates"] == ["seed:0"]
    for split in EVAL_SPLITS:
        for metric in ("acc_avg", "acc_wg"):
            assert scored["results"][split][metric] == summary["metrics"][split][metric]


# ---------------------------------------------------------------------------------- resume
# Long enough (15 Fish epochs / ~4 ERM epochs, ~1-2 s) that the first checkpoint (step 10)
# appears well before the end: the kill lands mid-run, usually between two checkpoints.
RESUME_ARGS = ["--max-steps", 120, "--checkpoint-every", 10, "--eval-every", 15, "--log-every", 1,
               "--meta-lr", 2.0]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """``gradmatch train ... RESUME_ARGS`` run to the end, once per algorithm."""
    runs = {}

    def get(algorithm):
        if algorithm not in runs:
            out = tmp_path_factory.mktemp(f"uninterrupted-{algorithm}") / "run"
            assert cli_main(train_args(out, *RESUME_ARGS, algorithm=algorithm)) == 0
            runs[algorithm] = out
        return runs[algorithm]
    return get


def assert_same_run(resumed, reference):
    assert_bitwise_equal(final_model(resumed), final_model(reference))
    log = read_log(resumed)
    train_steps = [r["step"] for r in log if r["kind"] == "train"]
    assert train_steps == list(range(1, 121)), "train steps missing or duplicated"
    assert without_timing(log) == without_timing(read_log(reference))
    assert (resumed / "summary.json").read_text() == (reference / "summary.json").read_text()
    assert snapshot(resumed / "predictions") == snapshot(reference / "predictions")


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["fish", "erm"])
def test_resume_after_a_hard_kill_is_exact(algorithm, tmp_path, capsys, uninterrupted):
    out = tmp_path / "run"
    args = train_args(out, *RESUME_ARGS, algorithm=algorithm)
    proc = start_cli(args, tmp_path / "output.txt")
    wait_for(out / "checkpoint.pt", proc, tmp_path / "output.txt")
    time.sleep(0.1)  # a few steps more: the kill lands between two checkpoints, mid-epoch
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert not (out / "summary.json").exists(), "the run finished before it was killed"
    killed_at = torch.load(out / "checkpoint.pt", weights_only=True)["step"]
    assert 0 < killed_at < 120

    code, _, err = cli(capsys, *args, "--resume")
    assert code == 0, err
    assert_same_run(out, uninterrupted(algorithm))


@pytest.mark.slow
@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_keeps_a_checkpoint_that_resumes_exactly(presses, tmp_path, capsys, uninterrupted):
    """One Ctrl-C stops at the end of the current step and saves there; a second one (3 ms later,
    nearly always within the same ~10 ms step) stops at once, mid-step, and must not save that
    half-updated state: the previous checkpoint stays."""
    out = tmp_path / "run"
    args = train_args(out, *RESUME_ARGS)
    proc = start_cli(args, tmp_path / "output.txt")
    wait_for(out / "checkpoint.pt", proc, tmp_path / "output.txt")
    time.sleep(0.05)  # land between two periodic checkpoints
    for _ in range(presses):
        proc.send_signal(signal.SIGINT)
        time.sleep(0.003)  # two signals at once would reach the handler as one
    assert proc.wait(timeout=60) == 130
    message = (tmp_path / "output.txt").read_text()
    assert "continue with --resume" in message and not (out / "summary.json").exists()
    stopped_at = torch.load(out / "checkpoint.pt", weights_only=True)["step"]
    if presses == 1:
        assert f"interrupted at step {stopped_at}; checkpoint saved" in message

    code, _, err = cli(capsys, *args, "--resume")
    assert code == 0, err
    assert_same_run(out, uninterrupted("fish"))


def test_resume_of_a_run_killed_while_writing_its_predictions(fish_run, tmp_path):
    finished, cfg, summary = fish_run
    out = simulate_kill_before_summary(finished, tmp_path / "run")
    resumed = train(tiny_config(out, **{k: getattr(cfg, k) for k in (
        "max_steps", "eval_every", "gip_every", "log_every", "meta_lr", "checkpoint_every")}), resume=True)
    assert resumed == summary
    assert without_timing(read_log(out)) == without_timing(read_log(finished))
    assert_bitwise_equal(final_model(out), final_model(finished))


def test_resume_can_extend_a_run_with_a_lower_learning_rate(fish_run, tmp_path):
    finished, cfg, _ = fish_run
    out = simulate_kill_before_summary(finished, tmp_path / "run")
    train(tiny_config(out, max_steps=30, eval_every=4, log_every=1, meta_lr=2.0, lr=5e-4), resume=True)
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert checkpoint["step"] == 30
    assert [g["lr"] for g in checkpoint["learner"]["inner_optimizer"]["param_groups"]] == [5e-4]
    train_steps = [r["step"] for r in read_log(out) if r["kind"] == "train"]
    assert train_steps == FISH_RUN_TRAIN_STEPS + list(range(25, 31))


# ---------------------------------------------------------------------------------- guards
def test_a_second_run_into_the_same_folder_is_refused(fish_run, tmp_path, capsys):
    finished, _, _ = fish_run
    unfinished = simulate_kill_before_summary(finished, tmp_path / "unfinished")
    before = snapshot(unfinished)
    code, _, err = cli(capsys, *train_args(unfinished, "--max-steps", 24))
    assert code == 2 and "pass --resume to continue it" in err
    assert snapshot(unfinished) == before

    before = snapshot(finished)
    code, _, err = cli(capsys, *train_args(finished, "--max-steps", 24))
    assert code == 2 and "holds a finished run" in err and "choose another --out" in err
    assert snapshot(finished) == before


def test_resume_without_a_checkpoint_is_refused(tmp_path, capsys):
    code, _, err = cli(capsys, *train_args(tmp_path / "new", "--max-steps", 4, "--resume"))
    assert code == 2 and "no checkpoint.pt" in err and "without --resume" in err
    assert not (tmp_path / "new").exists()


def test_resume_of_a_finished_run_is_refused(fish_run, capsys):
    finished, _, _ = fish_run
    before = snapshot(finished)
    code, _, err = cli(capsys, *train_args(finished, "--max-steps", 24, "--resume"))
    assert code == 2 and "finished run" in err and "nothing to resume" in err
    assert snapshot(finished) == before


def test_resume_with_another_seed_is_refused(fish_run, tmp_path, capsys):
    out = simulate_kill_before_summary(fish_run[0], tmp_path / "run")
    before = snapshot(out)
    code, _, err = cli(capsys, *train_args(out, "--max-steps", 24, "--seed", 1, "--resume"))
    assert code == 2 and "seed=1 differs from the saved run's 0" in err
    assert snapshot(out) == before


def test_unknown_dataset_is_refused_with_the_known_names(tmp_path, capsys):
    code, _, err = cli(capsys, "train", "--dataset", "camelyon", "--out", tmp_path / "run")
    assert code == 2 and "camelyon" in err
    for name in ("cdsprites", "camelyon17", "fmow", "iwildcam", "poverty", "civilcomments", "amazon"):
        assert name in err
    assert not (tmp_path / "run").exists()


def test_wilds_dataset_missing_on_disk_is_not_downloaded(tmp_path, capsys):
    root = tmp_path / "data"
    root.mkdir()
    code, _, err = cli(capsys, "train", "--dataset", "camelyon17", "--root-dir", root,
                       "--out", tmp_path / "run", "--no-progress")
    assert code == 2
    assert "--download" in err and str(root / "camelyon17_v1.0") in err
    assert list(root.iterdir()) == [] and not (tmp_path / "run").exists()


@pytest.mark.parametrize("flag,value", [("--batch-size", 0), ("--frac", 2), ("--frac", 0),
                                        ("--lr", "nan"), ("--max-steps", -1), ("--checkpoint-every", 0),
                                        ("--meta-steps", 5)])
def test_bad_values_are_refused(flag, value, tmp_path, capsys):
    code, _, err = cli(capsys, *train_args(tmp_path / "run", flag, value))
    assert code == 2 and flag in err
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------- divergence
def test_a_diverging_run_stops_with_a_clear_error_and_keeps_its_checkpoint(tmp_path, capsys):
    # ERM with Adam at lr 1e30: step 1 is finite and moves every weight by ~1e30; step 2 is NaN.
    out = tmp_path / "run"
    code, _, err = cli(capsys, *train_args(out, "--algorithm", "erm", "--lr", 1e30, "--max-steps", 10,
                                           "--checkpoint-every", 1, "--log-every", 1))
    assert code == 1
    assert "non-finite loss" in err
    assert f"The last checkpoint ({out / 'checkpoint.pt'}) is kept" in err
    assert "rerun with --resume and a lower --lr" in err
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert checkpoint["step"] == 1 and checkpoint["learner"]["num_steps"] == 1
    assert [r["step"] for r in read_log(out)] == [1]
    assert not (out / "summary.json").exists()


def test_a_run_diverging_before_its_first_checkpoint_says_so(tmp_path, capsys):
    # Fish at inner lr 1e30 diverges inside step 1 (the second domain's inner step).
    out = tmp_path / "run"
    code, _, err = cli(capsys, *train_args(out, "--lr", 1e30, "--max-steps", 10))
    assert code == 1 and "non-finite loss" in err
    assert not (out / "checkpoint.pt").exists()
    assert "no checkpoint" in err.lower() and "new --out" in err


# ---------------------------------------------------------------------------------- warm-up, presets
def test_erm_warmup_precedes_fish_steps(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = cli(capsys, *train_args(out, "--erm-warmup-steps", 5, "--max-steps", 12, "--log-every", 1))
    assert code == 0, err
    train_records = [r for r in read_log(out) if r["kind"] == "train"]
    assert [r["step"] for r in train_records] == list(range(1, 13))
    assert [r["phase"] for r in train_records] == ["warmup"] * 5 + ["fish"] * 7
    assert torch.load(out / "checkpoint.pt", weights_only=True)["learner"]["num_steps"] == 12


# ---------------------------------------------------------------------------------- official recipe
WARMUP = 16
HANDOFF_ARGS = ["--erm-warmup-steps", WARMUP, "--eval-every", 2, "--meta-lr", 12, "--log-every", 1]


def val_scores(out):
    return [(r["step"], r["metrics"]["acc_avg"]) for r in read_log(out)
            if r["kind"] == "eval" and r["split"] == "val"]


def first_best(scores):
    """The step model selection keeps: the first of the highest scores."""
    top = max(value for _, value in scores)
    return next(step for step, value in scores if value == top)


@pytest.mark.parametrize("handoff", ["best", "last"])
def test_after_the_warmup_selection_restarts_so_the_kept_model_is_a_fish_model(handoff, tmp_path, capsys):
    """Official (best): whatever the warm-up models scored, the kept model is the best Fish
    model. ``last`` (the earlier behaviour): the best of all, warm-up models included."""
    out = tmp_path / "run"
    code, _, err = cli(capsys, *train_args(out, *HANDOFF_ARGS, "--max-steps", 26,
                                           "--warmup-handoff", handoff))
    assert code == 0, err
    scores = val_scores(out)
    warm, fish = [s for s in scores if s[0] <= WARMUP], [s for s in scores if s[0] > WARMUP]
    summary = json.loads((out / "summary.json").read_text())
    expected = first_best(fish) if handoff == "best" else first_best(scores)
    assert summary["selected_step"] == expected
    assert summary["warmup_selection"]["step"] == first_best(warm)
    if handoff == "last":  # (the settings make a warm-up model the best of all)
        assert summary["selected_step"] <= WARMUP


def test_fish_starts_from_the_best_warmup_model_bit_for_bit(tmp_path, capsys):
    runs = {}
    for handoff in ("best", "last"):
        out = tmp_path / handoff
        code, _, err = cli(capsys, *train_args(out, *HANDOFF_ARGS, "--max-steps", WARMUP,
                                               "--warmup-handoff", handoff))
        assert code == 0, err
        runs[handoff] = out
    best = torch.load(runs["best"] / "best_model.pt", weights_only=True)
    assert best["step"] == first_best(val_scores(runs["best"])) < WARMUP  # (not the last model)
    handoff = [r for r in read_log(runs["best"]) if r["kind"] == "handoff"]
    assert handoff == [{"kind": "handoff", "step": WARMUP, "from_step": best["step"],
                        "acc_avg": best["acc_avg"]}]
    assert_bitwise_equal(final_model(runs["best"]), best["model"])
    last = final_model(runs["last"])  # the same warm-up, continued from its last weights
    assert any(not torch.equal(last[k], best["model"][k]) for k in last)


@pytest.mark.parametrize("state,fish_steps", [("epoch", FISH_STEPS_PER_EPOCH),
                                              ("run", 2 * FISH_STEPS_PER_EPOCH), ("step", 1)])
def test_the_inner_optimizer_state_lasts_one_fish_epoch_as_officially(state, fish_steps, tmp_path,
                                                                      capsys):
    """Adam's state counts the inner steps since it was last reset. At the end of epoch 2 that
    is one epoch of Fish steps (official reload_inner_optim), two (never reset), or the last
    Fish step's (reset every step); each Fish step takes one inner step per domain."""
    out = tmp_path / "run"
    code, _, err = cli(capsys, *train_args(out, "--max-steps", 2 * FISH_STEPS_PER_EPOCH,
                                           "--inner-optimizer-state", state))
    assert code == 0, err
    inner = torch.load(out / "checkpoint.pt", weights_only=True)["learner"]["inner_optimizer"]["state"]
    counts = {float(s["step"]) for s in inner.values()}
    assert counts == {fish_steps * TINY["num_domains"]}


def test_presets_lists_every_preset(capsys):
    code, out, _ = cli(capsys, "presets")
    assert code == 0
    lines = out.splitlines()
    header, rule = lines[0], lines[1]
    rows = lines[2:2 + len(PRESETS)]
    assert [line.split()[0] for line in rows] == list(PRESETS)
    # a readable table: every column starts where its header starts, cells never run together
    starts = [i for i, c in enumerate(rule) if c == "-" and (i == 0 or rule[i - 1] == " ")]
    assert len(starts) == len(header.split()) == 12
    for row in rows:
        for start in starts[1:]:
            assert row[start - 2:start] == "  " and row[start] != " ", (row, start)
    camelyon = rows[0].split()
    assert camelyon[3] == f"{PRESETS['camelyon17'].optimizer_kwargs['lr']:g}"
