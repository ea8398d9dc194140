"""End to end: DomainBed's own, unmodified scripts (train, sweep, collect_results,
list_top_hparams, its hparams-registry test suite) driving the plugin's ``FishFast``.

Nothing of DomainBed is mocked: every script runs in a subprocess as a user would run it. Skipped
when no DomainBed checkout is found (``gradmatch.domainbed.find_checkout()``) or when real MNIST
is missing at ``<repo>/../shared/data/MNIST/raw``.

Cost. Every DomainBed checkpoint evaluates every sample of every environment, and ColoredMNIST
is all 70,000 MNIST digits: on a 2-core CPU one checkpoint takes about 2 minutes (a 2-step run
took 4m11s), and a sweep is 9 runs. So the runs read a prefix of the real MNIST files (the first
400 training and 200 test digits, rewritten as IDX files in a temporary ``MNIST/raw``; DomainBed
then builds its 3 environments of 200 digits from them exactly as from the full set). Set
``GRADMATCH_TEST_DOMAINBED_FULL_MNIST=1`` to run on the full ``../shared/data`` instead (tens of
minutes). Runs take 2 steps with DomainBed's default hparams; with ``--checkpoint_freq 100`` (the
ColoredMNIST default, which the sweep keeps) steps 0 and 1 are the only checkpoints. The
subprocesses get ``OMP_NUM_THREADS=1`` and ``GRADMATCH_DOMAINBED_WORKERS=0`` (see
``gradmatch.domainbed.workers``: DomainBed otherwise forks 8 DataLoader workers per loader).
"""
from __future__ import annotations

import json
import math
import os
import re
import struct
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from gradmatch.domainbed import DomainBedNotFound, find_checkout, workers

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(__file__).parents[1] / "../shared/data"
MNIST_RAW = DATA_ROOT / "MNIST" / "raw"
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
FULL_MNIST_ENV = "GRADMATCH_TEST_DOMAINBED_FULL_MNIST"
SUBSET = {"train": 400, "t10k": 200}  # digits kept per MNIST file: 200 per ColoredMNIST env
STEPS = 2
# seconds per subprocess: a safety net (the sweep takes 140 s on the idle 2 cores, over 300 s when loaded)
TIMEOUT = 900 if os.environ.get(FULL_MNIST_ENV) else 600
FISH_KEYS = ("fish_inner_optimizer", "fish_step_size", "fish_shuffle_domains",
             "fish_reset_inner_optimizer", "fish_erm_warmup_steps", "fish_gip_every")
ALGORITHMS = ("FishFast", "Fish", "ERM")
N_ENVS = 3  # ColoredMNIST


# ----------------------------------------------------------------------------- fixtures, helpers

@pytest.fixture(scope="module")
def checkout() -> Path:
    try:
        return find_checkout()
    except DomainBedNotFound as err:
        pytest.skip(f"no DomainBed checkout: {err}")


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory) -> Path:
    """A ``--data_dir`` holding ``MNIST/raw``: a prefix of the real files (default) or the real
    folder itself (``$GRADMATCH_TEST_DOMAINBED_FULL_MNIST=1``)."""
    missing = [name for name in MNIST_FILES if not (MNIST_RAW / name).is_file()]
    if missing:
        pytest.skip(f"real MNIST not found: {MNIST_RAW.resolve()} lacks {', '.join(missing)} "
                    "(uncompressed IDX files, torchvision's MNIST/raw layout)")
    if os.environ.get(FULL_MNIST_ENV):
        return DATA_ROOT.resolve()
    root = tmp_path_factory.mktemp("mnist_prefix")
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in MNIST_FILES:
        split = name.split("-")[0]
        header, item = (16, 28 * 28) if "images" in name else (8, 1)
        data = (MNIST_RAW / name).read_bytes()
        total = struct.unpack(">I", data[4:8])[0]
        n = SUBSET[split]
        assert n <= total, (name, total)
        (raw / name).write_bytes(data[:4] + struct.pack(">I", n) + data[8:header]
                                 + data[header:header + n * item])
    return root


def _env(*front, **extra) -> dict:
    """The test environment, with ``front`` prepended to ``PYTHONPATH``."""
    env = dict(os.environ)
    paths = [str(p) for p in front] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env.update({"PYTHONPATH": os.pathsep.join(paths), "OMP_NUM_THREADS": "1",
                "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", workers.ENV_VAR: "0"})
    env.update(extra)
    return env


def _plugin_env(checkout: Path, **extra) -> dict:
    """For the plugin's entry points: the working tree's ``gradmatch``; the checkout is found by
    the plugin itself (``$DOMAINBED_DIR`` pins it to the one these tests found)."""
    return _env(REPO / "plugins", DOMAINBED_DIR=str(checkout), **extra)


def _run(args, env, cwd=REPO, timeout=TIMEOUT) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, (
        f"exit {proc.returncode}: {' '.join(map(str, args))}\n"
        f"--- stdout (tail)\n{proc.stdout[-4000:]}\n--- stderr (tail)\n{proc.stderr[-4000:]}")
    return proc


def _records(run_dir: Path) -> list:
    return [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()
            if line.strip()]


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


# ----------------------------------------------------------------------------- workers knob

def test_worker_env_parsing():
    assert workers.parse(None) is None
    assert workers.parse("") is None and workers.parse("  ") is None
    assert workers.parse("0") == 0 and workers.parse(" 4 ") == 4
    for bad in ("-1", "two", "1.5"):
        with pytest.raises(ValueError, match=workers.ENV_VAR):
            workers.parse(bad)


WIRING_SCRIPT = textwrap.dedent("""
    import json, runpy, sys
    seen = {}
    def run_module(name, **kwargs):  # stands in for DomainBed's train script: report, don't train
        from domainbed import datasets
        seen["module"] = name
        seen["train"] = {c: getattr(datasets, c).N_WORKERS for c in sys.argv[1:]}
    runpy.run_module = run_module
    from gradmatch.domainbed import train, workers
    train.main()
    from domainbed import datasets
    assert workers.apply_env({}) is None
    seen["unset"] = {c: getattr(datasets, c).N_WORKERS for c in sys.argv[1:]}
    assert workers.apply_env({workers.ENV_VAR: "0"}) == 0
    seen["zero"] = {c: getattr(datasets, c).N_WORKERS for c in sys.argv[1:]}
    print(json.dumps(seen))
""")


def test_worker_knob_reaches_domainbed_datasets(checkout):
    """``workers.apply_env`` sets DomainBed's ``N_WORKERS`` on every dataset class; the train
    entry point applies ``$GRADMATCH_DOMAINBED_WORKERS`` after ``register()``."""
    classes = ["MultipleDomainDataset", "ColoredMNIST", "RotatedMNIST", "PACS", "DomainNet"]
    proc = _run([sys.executable, "-c", WIRING_SCRIPT, *classes],
                _plugin_env(checkout, **{workers.ENV_VAR: "3"}))
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["module"] == "domainbed.scripts.train"
    assert seen["zero"] == {c: 0 for c in classes}
    assert seen["train"] == {c: 3 for c in classes}
    assert seen["unset"] == seen["train"]


# ----------------------------------------------------------------------------- 1. train

LOAD_SCRIPT = textwrap.dedent("""
    # DomainBed's documented recipe (issue #21): rebuild from the saved args/hparams, load strictly.
    import json, sys, torch
    from gradmatch.domainbed.register import register
    register()
    from domainbed import algorithms, networks
    save = torch.load(sys.argv[1])
    cls = algorithms.get_algorithm_class(save["args"]["algorithm"])
    algorithm = cls(save["model_input_shape"], save["model_num_classes"],
                    save["model_num_domains"], save["model_hparams"])
    fresh_keys = sorted(algorithm.state_dict())
    algorithm.load_state_dict(save["model_dict"])  # strict=True
    loaded = algorithm.state_dict()
    net = networks.WholeFish(save["model_input_shape"], save["model_num_classes"],
                             save["model_hparams"])
    algorithm.eval()
    with torch.no_grad():
        logits = algorithm.predict(torch.rand(4, *save["model_input_shape"]))
    print(json.dumps({
        "class": type(algorithm).__module__ + "." + type(algorithm).__name__,
        "saved_keys": sorted(save["model_dict"]),
        "fresh_keys": fresh_keys,
        "one_network_keys": sorted("network." + k for k in net.state_dict()),
        "equal_after_load": all(torch.equal(loaded[k], v) for k, v in save["model_dict"].items()),
        "num_domains": save["model_num_domains"],
        "hparams": sorted(save["model_hparams"]),
        "logits_shape": list(logits.shape),
    }))
""")


@pytest.mark.slow
def test_train_records_plugin_stats_and_saves_one_loadable_network(checkout, mnist_root, tmp_path):
    out = tmp_path / "run"
    _run([sys.executable, "-m", "gradmatch.domainbed.train", "--algorithm", "FishFast",
          "--dataset", "ColoredMNIST", "--data_dir", mnist_root, "--test_envs", "2",
          "--steps", STEPS, "--checkpoint_freq", 100, "--output_dir", out,
          "--hparams", json.dumps({"fish_gip_every": 1})], _plugin_env(checkout))

    assert (out / "done").read_text() == "done"
    records = _records(out)
    assert [r["step"] for r in records] == list(range(STEPS))  # first and last step only
    for r in records:
        for key in ("loss", "phase", "gip", "gip_cos", "step_time", "epoch"):
            assert _finite(r[key]), (key, r.get(key))
        assert r["phase"] == 1.0  # no ERM warm-up by default
        assert -1.0 - 1e-6 <= r["gip_cos"] <= 1.0 + 1e-6
        for i in range(N_ENVS):
            for split in ("in", "out"):
                assert 0.0 <= r[f"env{i}_{split}_acc"] <= 1.0
        assert r["args"]["algorithm"] == "FishFast" and r["args"]["test_envs"] == [2]
        assert set(FISH_KEYS) | {"meta_lr", "lr", "batch_size"} <= set(r["hparams"])
        assert r["hparams"]["fish_gip_every"] == 1  # --hparams applied on top of the registry's

    proc = _run([sys.executable, "-c", LOAD_SCRIPT, out / "model.pkl"], _plugin_env(checkout))
    model = json.loads(proc.stdout.strip().splitlines()[-1])
    assert model["class"] == "gradmatch.domainbed.algorithms.FishFast"
    assert model["saved_keys"] and all(k.startswith("network.") for k in model["saved_keys"])
    assert model["saved_keys"] == model["fresh_keys"] == model["one_network_keys"]
    assert model["equal_after_load"]
    assert model["num_domains"] == N_ENVS - 1
    assert set(FISH_KEYS) <= set(model["hparams"])
    assert model["logits_shape"] == [4, 2]


def _headers(stdout: str) -> list:
    """The header rows DomainBed's train.py printed (``misc.print_row`` of the sorted keys)."""
    return [line.split() for line in stdout.splitlines() if line.split()[:1] == ["env0_in_acc"]]


def test_train_prints_one_header_when_gip_is_measured_every_other_step(checkout, tmp_path):
    """DomainBed's train.py prints the header again whenever a checkpoint's keys change. FishFast
    measures GIP every ``fish_gip_every`` steps and repeats the measurement in between, so with a
    checkpoint at every step there is still one header (Debug28: DomainBed's random 28x28
    toy data, 16 images per environment, hence batch 8; a few seconds)."""
    out = tmp_path / "run"
    proc = _run([sys.executable, "-m", "gradmatch.domainbed.train", "--algorithm", "FishFast",
                 "--dataset", "Debug28", "--test_envs", "0", "--steps", 5, "--checkpoint_freq", 1,
                 "--output_dir", out, "--hparams", json.dumps({"fish_gip_every": 2, "batch_size": 8})],
                _plugin_env(checkout, PYTHONWARNINGS=""), timeout=120)
    assert "pkg_resources" not in proc.stderr  # WILDS' `outdated` import: filtered (gradmatch.quiet)
    headers = _headers(proc.stdout)
    assert len(headers) == 1, proc.stdout[-3000:]
    assert {"gip", "gip_cos", "loss", "phase"} <= set(headers[0])
    records = _records(out)
    assert [r["step"] for r in records] == list(range(5))
    assert len({tuple(sorted(r)) for r in records}) == 1  # the same keys at every checkpoint
    gips = [r["gip"] for r in records]
    assert gips[1] == gips[0] and gips[3] == gips[2] and gips[2] != gips[1]  # measured at 0, 2, 4


def test_train_wrapper_rejects_bad_plugin_hparams_before_domainbed_writes(checkout, tmp_path):
    """A bad FishFast hparam: exit status 2, one ``gradmatch: error:`` line naming it, no
    traceback, and no ``--output_dir`` (DomainBed's train.py creates it first thing)."""
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "gradmatch.domainbed.train", "--algorithm", "FishFast", "--dataset",
         "Debug28", "--output_dir", str(out), "--hparams", json.dumps({"meta_lr": -1})],
        env=_plugin_env(checkout), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert [line for line in proc.stderr.splitlines() if "error:" in line] == [
        "gradmatch: error: FishFast hparam meta_lr must be a positive finite number, got -1: "
        "set it with --hparams '{\"meta_lr\": 0.5}'"]
    assert not out.exists()


@pytest.mark.parametrize("args,message", [
    (["--hparams", "{meta_lr: 1}"], "--hparams is not valid JSON"),
    (["--hparams", "[1]"], "--hparams must be a JSON object"),
    (["--algorithm", "FishFst"], "--algorithm FishFst is not a DomainBed algorithm: choose one of ERM,"),
    (["--dataset", "CMNIST"], "--dataset CMNIST is not a DomainBed dataset: choose one of"),
    (["--test_envs", "3"], "--test_envs 3 is not an environment of Debug28, whose environments are 0-2"),
    (["--hparams", '{"fish_gip_evry": 3}'], "unknown FishFast hparam 'fish_gip_evry'"),
    (["--algorithm", "IDGM", "--test_envs", "0", "1"], "IDGM matches gradients between training domains"),
    (["--hparams", '{"idgm_gamma": -1}', "--algorithm", "IDGM"], "IDGM hparam idgm_gamma must be"),
])
def test_train_wrapper_checks_arguments_domainbed_would_fail_on(checkout, args, message, tmp_path):
    from gradmatch.domainbed.register import register
    from gradmatch.domainbed.train import check_args

    register()
    base = ["--algorithm", "FishFast", "--dataset", "Debug28", "--output_dir", str(tmp_path / "run")]
    check_args(base)  # valid as it is
    with pytest.raises(ValueError, match=re.escape(message)):
        check_args(base + args)
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ValueError, match="--output_dir .* is under .*a_file, which is a file"):
        check_args(base + ["--output_dir", str(tmp_path / "a_file" / "run")])
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- 2. sweep

def _tables(text: str) -> dict:
    """collect_results' plain-text tables: ``{header: {row label: [cells]}}``."""
    tables, rows = {}, None
    for line in text.splitlines():
        if line.startswith("-------- "):
            rows = tables.setdefault(line[len("-------- "):].strip(), {})
        elif rows is not None and line.strip():
            cells = [c.strip() for c in line.split("  ") if c.strip()]
            rows[cells[0]] = cells[1:]
        else:
            rows = None
    return tables


@pytest.mark.slow
def test_sweep_collect_results_top_hparams_and_recovery(checkout, mnist_root, tmp_path):
    sweep_dir = tmp_path / "sweep"
    sweep_args = ["--datasets", "ColoredMNIST", "--algorithms", *ALGORITHMS,
                  "--data_dir", mnist_root, "--output_dir", sweep_dir,
                  "--command_launcher", "local", "--n_hparams", 1, "--n_trials", 1,
                  "--steps", STEPS, "--single_test_envs", "--skip_confirmation"]
    sweep = [sys.executable, "-m", "gradmatch.domainbed.sweep"]
    n_jobs = len(ALGORITHMS) * N_ENVS
    env = _plugin_env(checkout)

    proc = _run([*sweep, "launch", *sweep_args], env)
    assert f"{n_jobs} jobs: 0 done, 0 incomplete, {n_jobs} not launched." in proc.stdout
    assert f"Launched {n_jobs} jobs!" in proc.stdout

    # The local launcher ignores job exit codes: every job must have finished by itself.
    jobs = {}
    for run_dir in sorted(p for p in sweep_dir.iterdir() if p.is_dir()):
        assert (run_dir / "done").is_file(), f"{run_dir.name} did not finish:\n" + (
            (run_dir / "err.txt").read_text()[-3000:] if (run_dir / "err.txt").exists() else "")
        records = _records(run_dir)
        args = records[0]["args"]
        assert [r["step"] for r in records] == list(range(STEPS))
        jobs[args["algorithm"], tuple(args["test_envs"])] = run_dir
        fish_keys = set(FISH_KEYS) & set(records[0]["hparams"])
        if args["algorithm"] == "FishFast":  # the plugin's class and hparams ran in the job
            assert fish_keys == set(FISH_KEYS) and all("phase" in r for r in records)
        else:
            assert not fish_keys and all("phase" not in r for r in records)
    assert set(jobs) == {(a, (e,)) for a in ALGORITHMS for e in range(N_ENVS)}

    upstream_env = _env(checkout)  # DomainBed's own scripts, no plugin
    proc = _run([sys.executable, "-m", "domainbed.scripts.collect_results",
                 "--input_dir", sweep_dir], upstream_env)
    assert f"Total records: {n_jobs * STEPS}" in proc.stdout
    tables = _tables(proc.stdout)
    methods = {"training-domain validation set": True, "test-domain validation set (oracle)": True,
               # leave-one-domain-out needs runs with 2 test envs: cells are "X" here
               "leave-one-domain-out cross-validation": False}
    for method, filled in methods.items():
        for header in (f"Dataset: ColoredMNIST, model selection method: {method}",
                       f"Averages, model selection method: {method}"):
            assert header in tables, (header, proc.stdout)
            rows = tables[header]
            assert set(ALGORITHMS) <= set(rows), (header, rows)  # FishFast its own row, not Fish's
            if filled:
                for algorithm in ALGORITHMS:
                    cells = rows[algorithm]
                    assert "X" not in cells and all("+/-" in c for c in cells[:-1]), (header, cells)

    proc = _run([sys.executable, "-m", "domainbed.scripts.list_top_hparams", "--input_dir",
                 sweep_dir, "--algorithm", "FishFast", "--dataset", "ColoredMNIST",
                 "--test_env", 0], upstream_env)
    listed = proc.stdout
    assert "Model selection: training-domain validation set" in listed
    for key in FISH_KEYS + ("meta_lr",):
        assert f"\t\t\t{key}: " in listed, (key, listed)
    assert str(jobs["FishFast", (0,)]) in listed
    assert str(jobs["Fish", (0,)]) not in listed

    # A killed job: its folder exists without `done`. delete_incomplete removes just it, and a
    # relaunch re-runs just it, into the same (argument-hash) folder.
    victim = jobs["FishFast", (0,)]
    (victim / "done").unlink()
    others = {key: (d / "done").stat().st_mtime_ns for key, d in jobs.items() if d != victim}
    proc = _run([*sweep, "delete_incomplete", *sweep_args], env)
    assert f"{n_jobs} jobs: {n_jobs - 1} done, 1 incomplete, 0 not launched." in proc.stdout
    assert "About to delete 1 jobs." in proc.stdout
    assert not victim.exists()
    assert all(jobs[key].is_dir() for key in others)

    proc = _run([*sweep, "launch", *sweep_args], env)
    assert f"{n_jobs} jobs: {n_jobs - 1} done, 0 incomplete, 1 not launched." in proc.stdout
    assert "Launched 1 jobs!" in proc.stdout
    assert (victim / "done").read_text() == "done"
    records = _records(victim)
    assert [r["step"] for r in records] == list(range(STEPS))  # a fresh run, not appended
    assert records[0]["args"]["algorithm"] == "FishFast" and records[0]["args"]["test_envs"] == [0]
    assert {key: (jobs[key] / "done").stat().st_mtime_ns for key in others} == others


# ----------------------------------------------------------------------------- 3. DomainBed's tests

REGISTER_PLUGIN = textwrap.dedent("""
    # A pytest plugin (-p): registers gradmatch's algorithms before DomainBed's tests are collected
    # (they parametrize over domainbed.algorithms.ALGORITHMS at import time).
    import json, os
    from gradmatch.domainbed import ensure_importable
    ensure_importable()
    from domainbed import algorithms, datasets
    before = {"algorithms": list(algorithms.ALGORITHMS), "datasets": list(datasets.DATASETS)}
    from gradmatch.domainbed.register import register
    register()
    with open(os.environ["GRADMATCH_TEST_REGISTRY_OUT"], "w") as f:
        json.dump({"before": before, "after": {"algorithms": list(algorithms.ALGORITHMS),
                                               "datasets": list(datasets.DATASETS)}}, f)
""")


@pytest.mark.slow
def test_domainbed_hparams_registry_suite_passes_with_plugin(checkout, tmp_path):
    suite = checkout / "domainbed" / "test" / "test_hparams_registry.py"
    (tmp_path / "gradmatch_register_first.py").write_text(REGISTER_PLUGIN)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # not the project's or anyone else's config
    report, registry = tmp_path / "junit.xml", tmp_path / "registry.json"
    _run([sys.executable, "-m", "pytest", "-q", "-c", tmp_path / "pytest.ini", "--rootdir", tmp_path,
          "-p", "gradmatch_register_first", "-p", "no:cacheprovider", "--junitxml", report, suite],
         _env(tmp_path, REPO / "plugins", DOMAINBED_DIR=str(checkout), PYTHONDONTWRITEBYTECODE="1",
              GRADMATCH_TEST_REGISTRY_OUT=str(registry)), cwd=tmp_path)

    seen = json.loads(registry.read_text())
    before, after = seen["before"], seen["after"]
    assert {"FishFast", "IDGM"} <= set(after["algorithms"]) - set(before["algorithms"])
    cases = list(ET.parse(report).getroot().iter("testcase"))
    bad = [c.get("name") for c in cases if len(c)]  # failure, error or skipped child elements
    assert not bad, bad
    upstream = len(before["algorithms"]) * len(before["datasets"])
    assert len(cases) == len(after["algorithms"]) * len(after["datasets"]) > upstream
    for name in ("FishFast", "IDGM"):
        ran = [c.get("name") for c in cases if c.get("name").endswith("_" + name)]
        assert len(ran) == len(after["datasets"]), (name, ran)
