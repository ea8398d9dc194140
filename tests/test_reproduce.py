"""`gradmatch reproduce` / `gradmatch report`: jobs, launchers, resume, failures, the cdsprites and
wilds experiments, and the published-numbers table."""
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from gradmatch import demo
from gradmatch.cli import build_parser, main
from gradmatch.wilds.presets import PRESETS
from gradmatch.wilds.run_config import RunConfig
from reproduction import get_experiment
from reproduction.fish.collect_predictions import collect
from reproduction.fish.train_jobs import train_argv
from reproduction.folder import check_args, write_manifest
from reproduction.jobs import Job, read_failure
from reproduction.launch import launch_local
from reproduction.published import PUBLISHED, TRAINING_DOMAIN_VALIDATION
from reproduction.report import published_table, write_report


def _parsed(cfg: RunConfig) -> RunConfig:
    args = build_parser().parse_args(["train", *train_argv(cfg)])
    fields = {k: v for k, v in vars(args).items() if k not in ("command", "out", "resume", "threads")}
    return RunConfig(out_dir=args.out, **fields)


@pytest.mark.parametrize("which", ["demo_fish", "demo_erm", "fold", "switches"])
def test_train_argv_rebuilds_the_config_through_the_cli(which, tmp_path):
    settings = demo.demo_settings(3, 240, 15, 32, "sgd-small")
    cfg = {
        "demo_fish": lambda: demo.run_config(tmp_path, "fish", 2, settings, progress=False),
        "demo_erm": lambda: demo.run_config(tmp_path, "erm", 1, settings, progress=False),
        "fold": lambda: RunConfig(dataset="poverty", out_dir=str(tmp_path / "p"), fold="C", root_dir="/d",
                                  erm_warmup_steps=7, warmup_handoff="last", eval_splits=["val", "test"]),
        "switches": lambda: RunConfig(dataset="camelyon17", out_dir="x", pretrained=False, download=True,
                                      sync_batchnorm=True, progress=False, devices=2, precision="bf16-mixed",
                                      dataset_kwargs={"a": [1, 2], "b": "c"}),
    }[which]()
    assert _parsed(cfg) == cfg


def _py(code: str):
    return (sys.executable, "-c", code)


def test_local_launcher_resumes_records_failures_and_blocks_dependents(tmp_path):
    out = tmp_path
    count = ("import pathlib, sys; p = pathlib.Path('count_{0}'); "
             "p.write_text(p.read_text() + 'x' if p.exists() else 'x'); ")
    jobs = [
        Job("a", _py(count.format("a") + "pathlib.Path('a.done').write_text('')"), done="a.done"),
        Job("bad", _py(count.format("bad") + "print('boom'); sys.exit(3)"), done="bad.done"),
        Job("after_bad", _py("open('c.done', 'w')"), done="c.done", after=("bad",)),
        Job("after_a", _py("import sys; open('d.done', 'w').write(' '.join(sys.argv[1:]))"), done="d.done",
            after=("a",), resume_if="ckpt", resume_argv=("--resume",)),
        Job("silent", _py("pass"), done="never.done"),
    ]
    (out / "ckpt").write_text("")
    states = launch_local(out, jobs, parallel=2, echo=lambda _: None)
    assert states == {"a": "done", "bad": "failed", "after_bad": "blocked", "after_a": "done", "silent": "failed"}
    failed = json.loads((out / "jobs" / "bad.failed.json").read_text())
    assert failed["why"] == "exit status 3" and "boom" in failed["log_tail"]
    assert read_failure(out, jobs[1]) == "exit status 3: boom"   # the job's own last words
    assert "was not written" in json.loads((out / "jobs" / "silent.failed.json").read_text())["why"]
    assert read_failure(out, jobs[4]).endswith("was not written")   # no output: the reason alone
    assert (out / "d.done").read_text() == "--resume"  # the checkpoint made it a resumed run
    # a rerun runs nothing that finished or failed ...
    launch_local(out, jobs, parallel=2, echo=lambda _: None)
    assert (out / "count_a").read_text() == "x" and (out / "count_bad").read_text() == "x"
    # ... unless asked to retry the failures
    launch_local(out, jobs, parallel=1, retry_failed=True, echo=lambda _: None)
    assert (out / "count_a").read_text() == "x" and (out / "count_bad").read_text() == "xx"
    with pytest.raises(ValueError, match="not earlier jobs"):
        launch_local(out, [Job("x", _py("pass"), "x", after=("y",))], echo=lambda _: None)


def test_local_launcher_stops_at_its_deadline(tmp_path):
    """At the deadline the running job is terminated and recorded as stopped at the cap, the
    job after it does not start (it stays todo), and a finished job stays done."""
    import time

    from reproduction.launch import STOPPED_AT_CAP

    jobs = [Job("quick", _py("open('q.done', 'w')"), done="q.done"),
            Job("slow", _py("import time; open('started', 'w'); time.sleep(60)"), done="s.done", after=("quick",)),
            Job("later", _py("open('l.done', 'w')"), done="l.done", after=("slow",))]
    start = time.time()
    states = launch_local(tmp_path, jobs, parallel=1, echo=lambda _: None, deadline=start + 4)
    assert time.time() - start < 30
    assert states == {"quick": "done", "slow": "failed", "later": "blocked"}
    assert (tmp_path / "started").exists() and not (tmp_path / "l.done").exists()
    assert json.loads((tmp_path / "jobs" / "slow.failed.json").read_text())["why"] == STOPPED_AT_CAP
    # with no dependency between them, the job not started stays todo
    jobs = [Job("slow2", _py("import time; time.sleep(60)"), done="s2.done"),
            Job("other", _py("open('o.done', 'w')"), done="o.done")]
    states = launch_local(tmp_path, jobs, parallel=1, echo=lambda _: None, deadline=time.time() + 3)
    assert states == {"slow2": "failed", "other": "todo"}


def test_manifest_refuses_another_experiment_in_the_same_folder(tmp_path):
    cds = get_experiment("cdsprites")
    write_manifest(tmp_path, cds, "cpu", [])
    write_manifest(tmp_path, cds, "cpu", [])  # the same one again: fine (a resume)
    with pytest.raises(ValueError, match="choose another --out"):
        write_manifest(tmp_path, cds, "paper", [])
    with pytest.raises(FileNotFoundError, match="gradmatch reproduce"):
        write_report(tmp_path / "nothing")


def test_paper_scale_dry_runs_list_every_job(tmp_path, capsys):
    cds = get_experiment("cdsprites").jobs("paper", tmp_path)
    assert len(cds) == 7 * 3 * 2  # N x seeds x {ERM, Fish}
    assert all("--max-steps" not in j.argv for j in cds)  # the official epochs
    wilds = get_experiment("wilds").jobs("paper", tmp_path)
    trains = [j for j in wilds if j.name.startswith("train/")]
    expected = sum(len(PRESETS[d].replicates) for d in ("camelyon17", "civilcomments", "fmow", "iwildcam",
                                                         "poverty", "amazon"))
    assert len(trains) == expected == 10 + 5 + 3 + 3 + 5 + 3
    assert sorted(j.argv[j.argv.index("--fold") + 1] for j in trains if "--fold" in j.argv) == list("ABCDE")
    evaluate = [j for j in wilds if j.name.startswith("evaluate/")]
    assert len(evaluate) == 6 and all(j.after for j in evaluate)
    assert main(["reproduce", "wilds", "--scale", "paper", "--out", str(tmp_path), "--dry-run"]) == 0
    listing = capsys.readouterr().out
    assert listing.count("gradmatch.cli train") == expected and "41 jobs" in listing
    assert not (tmp_path / "reproduce.json").exists()  # a dry run writes nothing


def test_collect_refuses_conflicting_predictions(tmp_path):
    for run, text in (("r1", "1\n0\n"), ("r2", "1\n0\n"), ("r3", "0\n0\n")):
        d = tmp_path / run / "predictions" / "cdsprites"
        d.mkdir(parents=True)
        (d / "cdsprites_split:test_seed:0_epoch:best_pred.csv").write_text(text)
    (tmp_path / "r1" / "predictions" / "cdsprites" / "cdsprites_seed:0_manifest.json").write_text('{"a": 1}')
    collect(tmp_path / "sub", [tmp_path / "r1", tmp_path / "r2"])  # identical: fine
    assert json.loads((tmp_path / "sub" / "cdsprites" / "manifest.json").read_text())
    # the replicate's manifest (what gradmatch evaluate checks the data against) goes along
    assert (tmp_path / "sub" / "cdsprites" / "cdsprites_seed:0_manifest.json").read_text() == '{"a": 1}'
    with pytest.raises(FileExistsError, match="same replicate"):
        collect(tmp_path / "sub", [tmp_path / "r3"])
    with pytest.raises(FileNotFoundError, match="no predictions"):
        collect(tmp_path / "sub", [tmp_path / "empty"])


def test_published_table_sets_measured_values_beside_verified_sources():
    rows = published_table("domainbed", {("ColoredMNIST", "ERM", TRAINING_DOMAIN_VALIDATION): 49.94})
    cmnist = next(r for r in rows if r.startswith("| ColoredMNIST | ERM | " + TRAINING_DOMAIN_VALIDATION))
    assert "| 51.5 ± 0.1 | 49.9 |" in cmnist and cmnist.endswith("| yes |")
    assert all(p.source and isinstance(p.verified, bool) for p in PUBLISHED)
    assert "could be verified" in published_table("no-such-experiment", {})[0]


@pytest.mark.slow
def test_wilds_cpu_experiment_end_to_end_scores_match_a_direct_computation(tmp_path, monkeypatch):
    """Every replicate trains, the predictions are collected in the leaderboard layout, `gradmatch
    evaluate` scores them, and the report's numbers equal accuracies computed here from the files."""
    from gradmatch.wilds.cdsprites import CdSpritesNDataset
    from gradmatch.wilds.predictions import read_predictions
    from reproduction.fish import wilds as W

    monkeypatch.setattr(W, "CPU_STEPS", 6)
    monkeypatch.setattr(W, "CPU_DATASET_KWARGS", {"num_domains": 3, "data_seed": 0})
    jobs = W.jobs("cpu", tmp_path)
    write_manifest(tmp_path, W.EXPERIMENT, "cpu", jobs)
    states = launch_local(tmp_path, jobs, parallel=2, echo=lambda _: None)
    assert set(states.values()) == {"done"}
    files = sorted((tmp_path / "submission" / "fish" / "cdsprites").glob("*.csv"))
    assert len(files) == 3 * 3  # val, test, id_val x seeds 0-2
    test = CdSpritesNDataset(num_domains=3, seed=0).get_subset("test")
    accs = [np.mean(np.asarray(read_predictions(f)) == test.y_array.numpy())
            for f in files if "split:test_" in f.name]
    data = json.loads((tmp_path / "scores" / "fish" / "cdsprites_results.json").read_text())
    assert data["test"]["acc_avg"] == pytest.approx(np.mean(accs), abs=1e-6)  # WILDS scores in float32
    assert data["test"]["acc_avg_std"] == pytest.approx(np.std(accs, ddof=1), abs=1e-6)
    text = write_report(tmp_path).read_text()
    assert "| FISH | " in text and f"{100 * data['test']['acc_avg']:.1f} ±" in text
    assert "10 done" in text


def test_submitit_launcher_runs_jobs_in_dependency_waves(tmp_path, monkeypatch):
    """submitit's local executor (as on Slurm, one job per command): the second wave starts once
    the first is done, a failure is recorded and blocks its dependents."""
    from reproduction.launch import launch_submitit

    monkeypatch.setenv("GRADMATCH_SUBMITIT_EXECUTOR", "local")
    monkeypatch.setenv("GRADMATCH_SUBMITIT_FOLDER", str(tmp_path / "logs"))
    monkeypatch.setenv("GRADMATCH_SUBMITIT_GPUS", "0")
    monkeypatch.setenv("GRADMATCH_SUBMITIT_CPUS", "1")
    jobs = [Job("first", _py("open('first.done', 'w')"), done="first.done"),
            Job("second", _py("import os; assert os.path.exists('first.done'); open('second.done', 'w')"),
                done="second.done", after=("first",)),
            Job("bad", _py("raise SystemExit(4)"), done="bad.done"),
            Job("after_bad", _py("open('x.done', 'w')"), done="x.done", after=("bad",))]
    states = launch_submitit(tmp_path, jobs, echo=lambda _: None)
    assert states == {"first": "done", "second": "done", "bad": "failed", "after_bad": "blocked"}
    assert json.loads((tmp_path / "jobs" / "bad.failed.json").read_text())["why"] == "exit status 4"


def test_sigterm_stops_the_launcher_and_its_running_jobs(tmp_path):
    """`kill` of `gradmatch reproduce` must not leave its jobs running unattended (a rerun would
    then start a second process on the same run folder)."""
    import os
    import signal
    import subprocess
    import time

    child = "import os, time; open('child.pid', 'w').write(str(os.getpid())); time.sleep(120)"
    script = ("import sys; from pathlib import Path; from reproduction.jobs import Job; "
              "from reproduction.launch import launch_local; "
              f"launch_local(Path(sys.argv[1]), [Job('sleep', (sys.executable, '-c', {child!r}), 'never')])")
    launcher = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stderr=subprocess.DEVNULL)
    pid_file = tmp_path / "child.pid"
    deadline = time.time() + 60
    while not pid_file.exists() and time.time() < deadline:
        time.sleep(0.2)
    child_pid = int(pid_file.read_text())
    launcher.send_signal(signal.SIGTERM)
    assert launcher.wait(timeout=60) != 0
    time.sleep(0.5)
    with pytest.raises(ProcessLookupError):
        os.kill(child_pid, 0)


def _work(tmp_path) -> Path:
    """A work folder: a file, someone else's folder, an empty one, a demo folder, a reproduce
    folder (cdsprites, cpu) and one whose manifest is damaged."""
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    (tmp_path / "empty").mkdir()
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "demo_config.json").write_text("{}")
    write_manifest(tmp_path / "rep", get_experiment("cdsprites"), "cpu", [])
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "reproduce.json").write_text("{oops")
    return tmp_path


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("out,scale,jobs,message", [
    ("r", "cpu", 0, "--jobs must be an integer >= 1, got 0"),
    ("a_file", "cpu", 2, "--out {w}/a_file is a file, not a folder"),
    ("a_file/r", "cpu", 2, "{w}/a_file is a file, so no folder can be made under it; choose another --out"),
    ("foreign", "cpu", 2,
     "--out {w}/foreign is not empty and holds no reproduce.json (it is not a `gradmatch reproduce` folder)"),
    ("demo", "cpu", 2, "(it is a `gradmatch demo` folder"),
    ("rep", "paper", 2, "--out {w}/rep holds the cdsprites experiment at cpu scale"),
    ("bad", "cpu", 2, "{w}/bad/reproduce.json is not valid JSON"),
    ("r", "gpu", 2, "--scale gpu: the cdsprites experiment has scales cpu, paper"),
])
def test_reproduce_checks_its_arguments_before_anything(tmp_path, out, scale, jobs, message):
    work = _work(tmp_path)
    before = _snapshot(work)
    with pytest.raises(ValueError) as err:
        check_args(work / out, get_experiment("cdsprites"), scale, jobs)
    assert message.replace("{w}", str(work)) in str(err.value) and "\n" not in str(err.value)
    assert _snapshot(work) == before
    for fine in ("empty", "rep", "new/folder"):  # new, empty, or the same experiment and scale: fine
        check_args(work / fine, get_experiment("cdsprites"), "cpu", 1)
    assert _snapshot(work) == before


@pytest.mark.parametrize("argv,message", [
    (["report", "{w}/nothing"], "{w}/nothing does not exist: `gradmatch report DIR` reads the --out folder of "
                                "`gradmatch reproduce EXPERIMENT --scale SCALE --out DIR`"),
    (["report", "{w}/a_file"], "{w}/a_file is a file, not a folder"),
    (["report", "{w}/foreign"], "{w}/foreign is not a `gradmatch reproduce` folder: it has no reproduce.json"),
    (["report", "{w}/demo"], "{w}/demo is a `gradmatch demo` folder (its results are summary.json and demo.png)"),
    (["report", "{w}/bad"], "{w}/bad/reproduce.json is not valid JSON"),
    (["report", "{w}/rep", "--copy-to", "{w}/rep"], "--copy-to {w}/rep is the reproduce folder itself"),
    (["report", "{w}/rep", "--copy-to", "{w}/a_file"], "--copy-to {w}/a_file is a file, not a folder"),
    (["report", "{w}/rep", "--copy-to", "{w}/a_file/x"], "so no folder can be made under it; choose another --copy-to"),
])
def test_report_of_a_folder_it_cannot_read_says_what_to_pass(tmp_path, capsys, argv, message):
    work = _work(tmp_path)
    before = _snapshot(work)
    assert main([a.replace("{w}", str(work)) for a in argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if "error:" in line] == [
        "gradmatch: error: " + err.split("gradmatch: error: ")[1].strip()]
    assert message.replace("{w}", str(work)) in err
    assert _snapshot(work) == before


def test_manifest_naming_an_unknown_experiment_or_scale(tmp_path):
    for record, message in (({"experiment": "mnist", "scale": "cpu"}, "names experiment 'mnist', which is none of"),
                            ({"experiment": "cdsprites", "scale": "gpu"}, "names scale 'gpu'"),
                            ({"scale": "cpu"}, "lacks the experiment or the scale")):
        (tmp_path / "reproduce.json").write_text(json.dumps(record))
        with pytest.raises(ValueError, match=re.escape(message)):
            write_report(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reproduce.json"]
