"""``gradmatch reproduce adios``: the PACS split, the frozen-feature probes, a tiny end-to-end run
of the cpu scale through :func:`reproduction.launch.launch_local`, and the paper-scale job
list.

The split and probe tests need neither solo-learn nor PACS (PACS is used when present); the
end-to-end test needs both (``$SOLO_LEARN_DIR`` or the cache checkout; ``$PACS_DIR`` or
``<repo>/../shared/data/PACS``) and skips, saying which is missing, otherwise.
"""
from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from adios_ssl import split as split_tool
from adios_ssl.probe import accuracies, probe_features
from reproduction import adios as experiment
from reproduction.folder import write_manifest
from reproduction.jobs import format_jobs, job_states
from reproduction.launch import launch_local

PACS = Path(os.environ.get("PACS_DIR") or Path(__file__).parents[1] / "../shared/data/PACS").resolve()


def fake_domains(root: Path, sizes=None) -> Path:
    """``root/<domain>/<class>/<i>.png``: 2 domains x 3 classes with the given group sizes."""
    from PIL import Image

    sizes = sizes or {("d0", "a"): 10, ("d0", "b"): 7, ("d0", "c"): 2,
                      ("d1", "a"): 5, ("d1", "b"): 1, ("d1", "c"): 12}
    rng = np.random.default_rng(0)
    for (domain, cls), n in sizes.items():
        folder = root / domain / cls
        folder.mkdir(parents=True)
        for i in range(n):
            Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8)).save(folder / f"img{i:02d}.png")
    return root


def fake_pacs(root: Path, skip=()) -> Path:
    """``root/<domain>/<class>/0.png`` for PACS' 4 domains x 7 classes, one 8x8 image each,
    leaving out the ``<domain>`` or ``<domain>/<class>`` entries in ``skip``."""
    from PIL import Image

    for domain in experiment.PACS_DOMAINS:
        for cls in experiment.PACS_CLASSES:
            if domain in skip or f"{domain}/{cls}" in skip:
                continue
            (root / domain / cls).mkdir(parents=True)
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / domain / cls / "0.png")
    return root


@pytest.fixture()
def pacs_env(tmp_path, monkeypatch) -> Path:
    """``$PACS_DIR`` pointing at a fake PACS (the cpu scale's job list needs one)."""
    root = fake_pacs(tmp_path / "PACS")
    monkeypatch.setenv("PACS_DIR", str(root))
    return root


# ----------------------------------------------------------------------------- split

def _check_split(src: Path, out: Path, manifest: dict, fraction: float) -> None:
    groups = Counter()
    for domain in sorted(p.name for p in src.iterdir() if p.is_dir()):
        for cls in sorted(p.name for p in (src / domain).iterdir() if p.is_dir()):
            groups[(domain, cls)] = sum(1 for p in (src / domain / cls).iterdir()
                                        if p.suffix.lower() in split_tool.IMAGE_SUFFIXES)
    train, test = set(manifest["files"]["train"]), set(manifest["files"]["test"])
    assert not train & test, "train and test overlap"
    assert len(train) + len(test) == sum(groups.values()), "an image is missing from the split"
    for (domain, cls), n in groups.items():
        n_test = manifest["counts"]["test"].get(domain, {}).get(cls, 0)
        n_train = manifest["counts"]["train"].get(domain, {}).get(cls, 0)
        assert n_test + n_train == n
        assert n_test == split_tool.num_test(n, fraction)  # stratified: per domain x class
        if n >= 2:
            assert n_train >= 1 and n_test >= 1
    for split in split_tool.SPLITS:
        on_disk = {f"{p.parent.name}/{p.name}" for p in (out / split).glob("*/*")}
        assert on_disk == set(manifest["files"][split])
        link = out / split / manifest["files"][split][0]
        assert link.is_symlink() and link.resolve().is_file()
        domain, name = link.name.split("__", 1)
        assert link.resolve() == (src / domain / link.parent.name / name).resolve()


def test_split_is_deterministic_stratified_and_disjoint(tmp_path):
    src = fake_domains(tmp_path / "src")
    first = split_tool.write_split(src, tmp_path / "a", test_fraction=0.2, seed=3)
    _check_split(src, tmp_path / "a", first, 0.2)
    again = split_tool.write_split(src, tmp_path / "b", test_fraction=0.2, seed=3)
    assert again["files"] == first["files"]
    # the same call on a finished split reuses it; other settings in the same folder are refused
    assert split_tool.write_split(src, tmp_path / "a", test_fraction=0.2, seed=3) == first
    with pytest.raises(split_tool.SplitError):
        split_tool.write_split(src, tmp_path / "a", test_fraction=0.2, seed=4)
    other = split_tool.plan_split(src, test_fraction=0.2, seed=4)
    assert other["test"] != [tuple(x) for x in first["files"]["test"]]
    # a group of 1 stays in train; the order within a group does not depend on listing order
    assert first["counts"]["test"]["d1"].get("b", 0) == 0
    names = [f"img{i:02d}.png" for i in range(10)]
    assert split_tool.group_order(names, "d0", "a", 3) == split_tool.group_order(names[::-1], "d0", "a", 3)
    small = split_tool.write_split(src, tmp_path / "c", test_fraction=0.5, seed=0, max_per_group=4)
    assert max(n for d in small["counts"]["train"].values() for n in d.values()) <= 2
    # the CLI, with the source given as an environment variable
    os.environ["ADIOS_TEST_SRC"] = str(src)
    try:
        assert split_tool.main(["$ADIOS_TEST_SRC", str(tmp_path / "d"), "--seed", "3"]) == 0
    finally:
        del os.environ["ADIOS_TEST_SRC"]
    assert json.loads((tmp_path / "d" / "split.json").read_text())["files"] == first["files"]
    assert split_tool.main(["$ADIOS_UNSET_VARIABLE_X", str(tmp_path / "e")]) == 2


@pytest.mark.skipif(not PACS.is_dir(), reason=f"PACS not found at {PACS} (set $PACS_DIR)")
def test_split_of_pacs(tmp_path):
    manifest = split_tool.write_split(PACS, tmp_path / "pacs", test_fraction=0.2, seed=0)
    _check_split(PACS, tmp_path / "pacs", manifest, 0.2)
    assert manifest["sizes"] == {"train": 7993, "test": 1998}
    assert manifest["domain_names"] == ["art_painting", "cartoon", "photo", "sketch"]
    assert len(manifest["classes"]) == 7
    plan = split_tool.plan_split(PACS, 0.2, 0)
    assert sorted(f"{c}/{d}__{n}" for d, c, n in plan["test"]) == sorted(manifest["files"]["test"])


# ----------------------------------------------------------------------------- probes

def _structured(n_train=600, n_test=300, classes=5, dim=16, seed=0, noise=1.0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (classes, dim))

    def draw(n):
        y = rng.integers(0, classes, n)
        return centres[y] + noise * rng.normal(size=(n, dim)), y

    (xtr, ytr), (xte, yte) = draw(n_train), draw(n_test)
    domains = np.array(["a", "b", "c"])[rng.integers(0, 3, n_test)].tolist()
    return xtr, ytr, xte, yte, domains


def test_probes_match_a_direct_sklearn_computation():
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.preprocessing import StandardScaler

    xtr, ytr, xte, yte, domains = _structured(noise=2.5)
    result = probe_features(xtr, ytr, xte, yte, domains)
    scaler = StandardScaler().fit(xtr)
    lin = LogisticRegression(C=1.0, max_iter=1000).fit(scaler.transform(xtr), ytr).predict(scaler.transform(xte))
    norm = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    sims = norm(xte) @ norm(xtr).T
    nearest = np.argsort(-sims, axis=1, kind="stable")[:, :20]
    votes = np.array([np.bincount(ytr[row], minlength=5) for row in nearest])
    knn_by_hand = votes.argmax(1)
    knn = KNeighborsClassifier(n_neighbors=20, metric="cosine", algorithm="brute").fit(xtr, ytr).predict(xte)
    for name, pred in (("linear", lin), ("knn", knn)):
        expected = 100 * np.mean(pred == yte)
        assert result[name]["overall"] == pytest.approx(expected)
        doms = np.array(domains)
        for d in "abc":
            assert result[name]["per_domain"][d] == pytest.approx(100 * np.mean(pred[doms == d] == yte[doms == d]))
    # the k-NN vote by hand (cosine, 20 neighbours, majority) agrees except on exact ties
    assert np.mean(knn_by_hand == knn) > 0.97
    assert 40 < result["linear"]["overall"] < 100 and result["linear"]["converged"]


def test_probes_on_known_structure():
    xtr, ytr, xte, yte, domains = _structured(noise=0.05)  # separated clusters
    result = probe_features(xtr, ytr, xte, yte, domains)
    assert result["linear"]["overall"] == 100.0 and result["knn"]["overall"] == 100.0
    rng = np.random.default_rng(1)  # features that carry nothing: chance (20 %)
    noise = probe_features(rng.normal(size=(600, 16)), ytr, rng.normal(size=(300, 16)), yte, domains)
    assert noise["linear"]["overall"] < 32 and noise["knn"]["overall"] < 32
    acc = accuracies(np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0]), ["x", "x", "y", "y"])
    assert acc == {"overall": 75.0, "per_domain": {"x": 100.0, "y": 50.0}, "n": 4}


# ----------------------------------------------------------------------------- paper scale

def test_paper_scale_dry_run(tmp_path):
    from adios_ssl import configs

    jobs = experiment.EXPERIMENT.jobs("paper", tmp_path)
    # 9 shipped ResNet-18 configs + 6 official ViT-Tiny runs, each pretraining + main_linear.py
    assert len(jobs) == 30
    assert sum(j.name.startswith("pretrain/") for j in jobs) == 15
    assert sum("vittiny" in j.name for j in jobs) == 12
    config_dir = Path(configs.__file__).parent
    text = format_jobs(tmp_path, jobs)
    assert "30 jobs" in text
    for pre, lin in zip(jobs[::2], jobs[1::2]):
        assert lin.after == (pre.name,) and lin.name == pre.name.replace("pretrain/", "linear/")
        argv = list(pre.argv)
        config = argv[argv.index("--config-name") + 1]
        assert (config_dir / f"{config}.yaml").is_file()
        assert any("$IMAGENET100_DIR" in a or "$STL10_DIR" in a for a in argv)
        assert any(a.startswith("pretrained_feature_extractor=") and a.endswith("/final.ckpt")
                   for a in lin.argv)
        assert (tmp_path / pre.done).parent == (tmp_path / lin.done).parent
    assert set(job_states(tmp_path, jobs).values()) == {"todo"}
    vit = [j for j in jobs if j.name == "pretrain/stl10_byol_adios_vittiny"][0]
    assert "optimizer.batch_size=64" in vit.argv and "backbone.name=vit_tiny" in vit.argv
    # a data variable that is not set stops the job with a message naming it
    with pytest.raises(KeyError, match="IMAGENET100_DIR"):
        experiment.expand(["data.train_path=$IMAGENET100_DIR/train"], environ={})
    assert experiment.expand(["x=${STL10_DIR}/a"], environ={"STL10_DIR": "/d"}) == ["x=/d/a"]
    report = experiment.EXPERIMENT.report(tmp_path, "paper")
    assert report.compare == {} and "0 of 15 runs" in report.markdown


# ----------------------------------------------------------------------------- cpu scale: seeds

def test_cpu_scale_runs_every_arm_at_two_seeds_keeping_seed_0_folders(tmp_path, pacs_env):
    jobs = {j.name: j for j in experiment.EXPERIMENT.jobs("cpu", tmp_path)}
    assert jobs["split"].argv[3:5] == (str(pacs_env.resolve()), "data")
    keys = [a.key for a in experiment.ARMS]
    pretrain = sorted(n for n in jobs if n.startswith("pretrain/"))
    assert pretrain == sorted([f"pretrain/{k}" for k in keys] + [f"pretrain/{k}_seed1" for k in keys])
    assert len(jobs) == 2 + 2 * 2 * len(keys)   # split, floor probe; pretrain + probe per arm x seed
    for key in keys:
        seed0, seed1 = jobs[f"pretrain/{key}"], jobs[f"pretrain/{key}_seed1"]
        assert "++seed=0" in seed0.argv and "++seed=1" in seed1.argv
        assert seed0.cwd == f"arms/{key}" and seed1.cwd == f"arms/{key}_seed1"
        # everything else is the same command
        assert seed1.argv == tuple(a.replace("++seed=0", "++seed=1").replace(
            f"name=pacs-{key}", f"name=pacs-{key}_seed1") for a in seed0.argv)
        assert jobs[f"probe/{key}_seed1"].after == (f"pretrain/{key}_seed1",)


def _fake_probe(out: Path, run: str, linear: float, knn: float) -> None:
    per_domain = {"art_painting": linear, "sketch": linear}
    record = {"linear": {"overall": linear, "per_domain": per_domain, "converged": True},
              "knn": {"overall": knn, "per_domain": per_domain}, "n_test": 1998, "n_train": 7993,
              "size": 32, "cpu_seconds": {"total": 6.0}}
    (out / "probes").mkdir(parents=True, exist_ok=True)
    (out / "probes" / f"{run}.json").write_text(json.dumps(record))


def test_cpu_report_averages_seeds(tmp_path):
    """The per-arm table and ``compare`` hold the mean (and sample std) over each arm's seeds,
    computed here with numpy from the probe files."""
    values = {}
    rng = np.random.default_rng(0)
    for arm in experiment.ARMS:
        for run in (arm.key, f"{arm.key}_seed1"):
            values[run] = rng.uniform(20, 60, size=2).round(2)
            _fake_probe(tmp_path, run, *values[run])
    _fake_probe(tmp_path, "random_init", 45.0, 44.0)
    report = experiment.EXPERIMENT.report(tmp_path, "cpu")
    by_arm = {a["arm"]: a for a in report.data["arms"]}
    for arm in experiment.ARMS:
        both = np.array([values[arm.key], values[f"{arm.key}_seed1"]])
        for i, (key, metric) in enumerate((("linear", experiment.LINEAR_METRIC),
                                           ("knn", experiment.KNN_METRIC))):
            mean, std = both[:, i].mean(), both[:, i].std(ddof=1)
            assert report.compare[("PACS", arm.label, metric)] == pytest.approx(mean)
            assert by_arm[arm.label][key] == pytest.approx(mean)
            assert by_arm[arm.label][f"{key}_std"] == pytest.approx(std)
            assert by_arm[arm.label][f"{key}_by_seed"] == {0: both[0, i], 1: both[1, i]}
        row = f"| {arm.label} | 2 | {mean_cell(both[:, 0])} | {mean_cell(both[:, 1])} |"
        assert row in report.markdown
    assert by_arm["random init (no pretraining)"]["n"] == 1
    assert "2 pretraining seeds" in report.markdown and not report.data["missing"]
    # a missing seed is reported, and the arm's mean is over the seed that finished
    (tmp_path / "probes" / "adios_seed1.json").unlink()
    report = experiment.EXPERIMENT.report(tmp_path, "cpu")
    assert report.data["missing"] == ["adios_seed1"]
    assert report.compare[("PACS", "SimCLR+ADIOS", experiment.LINEAR_METRIC)] == pytest.approx(
        values["adios"][0])


def mean_cell(v) -> str:
    return f"{v.mean():.1f} ± {v.std(ddof=1):.1f} ({v[0]:.1f} / {v[1]:.1f})"


def test_gradmatch_does_not_import_adios_ssl_at_import_time(tmp_path, pacs_env):
    import subprocess

    code = ("import sys, reproduction as r; e = r.get_experiment('adios'); "
            "e.jobs('cpu', __import__('pathlib').Path('x')); e.jobs('paper', __import__('pathlib').Path('x')); "
            "print('adios_ssl' in sys.modules or 'solo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=tmp_path)
    assert out.stdout.strip() == "False"


# ----------------------------------------------------------------------------- PACS check

def test_the_cpu_scale_says_what_is_missing_when_there_is_no_pacs(tmp_path, monkeypatch):
    """The job list (and so ``gradmatch reproduce adios --dry-run``) checks for PACS the way
    the domainbed experiment checks for MNIST: ``$PACS_DIR``, else ./data/PACS or
    ./../shared/data/PACS, with a message naming what is missing and how to fix it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PACS_DIR", raising=False)
    with pytest.raises(FileNotFoundError) as err:
        experiment.EXPERIMENT.jobs("cpu", tmp_path / "out")
    message = str(err.value)
    assert message.startswith("PACS not found (data/PACS: no such folder; ../shared/data/PACS: "
                              f"no such folder, relative to {tmp_path}): set $PACS_DIR")
    assert "art_painting, cartoon, photo, sketch" in message and "domainbed.scripts.download" in message
    # a partial copy: the missing domain, the missing class, the empty class are named
    partial = fake_pacs(tmp_path / "partial", skip=("sketch", "photo/dog"))
    for image in (partial / "cartoon" / "house").iterdir():
        image.unlink()
    monkeypatch.setenv("PACS_DIR", str(partial))
    with pytest.raises(FileNotFoundError) as err:
        experiment.EXPERIMENT.jobs("cpu", tmp_path / "out")
    assert str(err.value).startswith(f"PACS not found ($PACS_DIR={partial}: missing images in "
                                     "cartoon/house/, photo/dog/, sketch/): set $PACS_DIR")
    # ./data/PACS is found without $PACS_DIR; the paper scale needs no PACS
    monkeypatch.delenv("PACS_DIR")
    fake_pacs(tmp_path / "data" / "PACS")
    jobs = experiment.EXPERIMENT.jobs("cpu", tmp_path / "out")
    assert jobs[0].argv[3] == str((tmp_path / "data" / "PACS").resolve())
    experiment.EXPERIMENT.jobs("paper", tmp_path / "out")


def test_a_finished_split_keeps_its_source_without_pacs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PACS_DIR", str(tmp_path / "gone"))
    (tmp_path / "out" / "data").mkdir(parents=True)
    (tmp_path / "out" / "data" / "split.json").write_text(json.dumps({"src": "/data/PACS"}))
    jobs = experiment.EXPERIMENT.jobs("cpu", tmp_path / "out")
    assert jobs[0].argv[3] == "/data/PACS"


# ----------------------------------------------------------------------------- end to end

def _solo_or_skip():
    from adios_ssl.sololearn.locate import SoloLearnNotFound, find_checkout

    try:
        find_checkout()
        import hydra  # noqa: F401
        import lightning  # noqa: F401
    except (SoloLearnNotFound, ImportError) as err:
        pytest.skip(f"needs a solo-learn checkout and the `solo` extra: {err}")


TINY = experiment.CpuSettings(epochs=2, crop=32, batch=8, max_per_group=4, seeds=(0,),
                              extra=("++limit_train_batches=1",), arms=("mae", "beit"))


def check_cpu_scale_run(out: Path, settings, n_train: int, n_test: int):
    """What a finished cpu-scale folder must hold for each arm of ``settings`` (seed 0): its
    pretraining marker, final checkpoint and solo-learn args (the settings and the arm's one
    override), its probe on the split's images, and a report with every arm, the floor, the
    mask pictures and the bar plot. Shared with the gpu-check rehearsal (its science part runs
    SimCLR, SimCLR+ADIOS and the random mask; this file's tiny run the MAE and BEiT masks)."""
    for key in settings.arms:
        pre = json.loads((out / "arms" / key / "pretrain.json").read_text())
        assert pre["epochs"] == settings.epochs and pre["cpu_s"] > 0
        assert (out / "arms" / key / "final.ckpt").resolve().is_file()
        args = json.loads((Path(pre["ckpt"]).parent / "args.json").read_text())
        assert args["augmentations"][0]["crop_size"] == settings.crop
        assert args["optimizer"]["batch_size"] == settings.batch
        assert args["method"] == ("simclr" if key == "simclr" else "simclr_adios")
        assert args["method_kwargs"].get("mask_generator", "-") == {
            "adios": "adversarial", "simclr": "-"}.get(key, key)
        probe = json.loads((out / "probes" / f"{key}.json").read_text())
        assert (probe["n_train"], probe["n_test"], probe["size"]) == (n_train, n_test, settings.crop)
        assert set(probe["linear"]["per_domain"]) == {"art_painting", "cartoon", "photo", "sketch"}
    report = experiment.EXPERIMENT.report(out, "cpu")
    assert [r["run"] for r in report.data["rows"]] == [
        a.key for a in experiment.ARMS if a.key in settings.arms] + ["random_init"]   # the arms' table order
    labels = {a.key: a.label for a in experiment.ARMS}
    for key in settings.arms:
        assert labels[key] in report.markdown
        for metric in (experiment.LINEAR_METRIC, experiment.KNN_METRIC):
            assert 0 <= report.compare[("PACS", labels[key], metric)] <= 100
    assert len(report.compare) == 2 * len(settings.arms)
    masked = [k for k in settings.arms if k != "simclr"]
    assert {f"masks_{k}_test.png" for k in masked} <= set(report.figures)
    if "adios" in settings.arms:
        assert "masks_adios_train.png" in report.figures
    for name in report.figures:
        assert (out / name).stat().st_size > 5_000, name
    assert report.figures[0] == "adios_probe_accuracy.png"
    json.dumps(report.data)
    assert "Honest note" in report.markdown and not report.data["missing"]
    return report


@pytest.mark.slow
@pytest.mark.skipif(not PACS.is_dir(), reason=f"PACS not found at {PACS} (set $PACS_DIR)")
def test_tiny_cpu_scale_end_to_end(tmp_path):
    """The MAE and BEiT arms pretrain 2 x 1 batch of 8 at 32 px on 4 PACS images per domain x
    class, then the probes and the report (SimCLR, SimCLR+ADIOS and the random mask run through
    the same jobs in the gpu-check rehearsal, tests/test_gpu_check.py, with the same checks)."""
    _solo_or_skip()
    out = tmp_path / "run"
    jobs = experiment.cpu_jobs(out, TINY, data_dir=str(PACS))
    write_manifest(out, experiment.EXPERIMENT, "cpu", jobs)
    messages = []
    states = launch_local(out, jobs, parallel=2, echo=messages.append)
    failed = {n: json.loads((out / "jobs" / f"{n}.failed.json").read_text())["log_tail"]
              for n, s in states.items() if s == "failed"}
    assert set(states.values()) == {"done"}, (states, failed)
    check_cpu_scale_run(out, TINY, n_train=84, n_test=28)
    # rerunning skips everything that is done
    assert set(launch_local(out, jobs, parallel=2, echo=messages.append).values()) == {"done"}


# ----------------------------------------------------------------------------- cpu-epochs scale

def _fake_ckpts(cwd: Path, layout: dict) -> dict:
    """``cwd/trained_models/simclr_adios/<version>/run-<version>-ep=<e>.ckpt`` for
    ``layout = {version: [epoch, ...]}``, each file's mtime set to ``1000 - epoch`` (older for
    later epochs: an mtime or listing order would pick the wrong one); returns ``{epoch: path}``
    of the last version holding each epoch."""
    paths = {}
    for version, epochs in layout.items():
        folder = cwd / "trained_models" / "simclr_adios" / str(version)
        folder.mkdir(parents=True, exist_ok=True)
        for e in epochs:
            path = folder / f"run-{version}-ep={e}.ckpt"
            path.write_bytes(b"x")
            os.utime(path, (1000 - e + version, 1000 - e + version))
            paths[e] = path
    return paths


def test_keep_epochs_resumes_from_the_latest_epoch_with_an_override_hydra_parses(tmp_path):
    """solo-learn's AutoResumer would resume from the first ``.ckpt`` a folder lists; with
    every epoch kept the wrapper names the latest epoch itself, quoted (its name has ``=``)."""
    from reproduction.adios.solo_job import keep_epochs_args

    assert keep_epochs_args(tmp_path, []) == ["++checkpoint.keep_prev=true", "auto_resume.enabled=false"]
    paths = _fake_ckpts(tmp_path, {0: [0, 1], 1: [2, 3]})
    extra = keep_epochs_args(tmp_path, [])
    assert extra[:2] == ["++checkpoint.keep_prev=true", "auto_resume.enabled=false"]
    assert extra[2] == f"++resume_from_checkpoint='{paths[3].resolve()}'"
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser
    except ImportError:
        pytest.skip("hydra (the `solo` extra) is not installed")
    parsed = OverridesParser.create().parse_overrides(extra)
    assert parsed[2].key_or_group == "resume_from_checkpoint"
    assert parsed[2].value() == str(paths[3].resolve())


def test_link_epochs_links_the_probed_epochs_and_prunes_the_rest(tmp_path):
    """``epoch<e>.ckpt`` -> the checkpoint written after ``e`` epochs (``ep=<e-1>``), the newest
    file of that epoch when a resumed run wrote it again; unprobed epochs but the last are
    deleted; a missing epoch is an error naming it."""
    from reproduction.adios.solo_job import link_epochs

    paths = _fake_ckpts(tmp_path, {0: [0, 1, 2], 1: [2, 3, 4]})
    linked = link_epochs(tmp_path, [], [1, 3, 5])
    assert linked == {1: str(paths[0]), 3: str(paths[2]), 5: str(paths[4])}
    assert paths[2].parent.name == "1"   # epoch 3 from the resumed run's folder
    for e in (1, 3, 5):
        assert (tmp_path / f"epoch{e}.ckpt").resolve() == paths[e - 1].resolve()
    left = sorted(p.name for p in tmp_path.glob("trained_models/*/*/*.ckpt"))
    assert left == ["run-0-ep=0.ckpt", "run-1-ep=2.ckpt", "run-1-ep=4.ckpt"]
    with pytest.raises(FileNotFoundError, match="epoch 2 "):
        link_epochs(tmp_path, [], [2])


def test_epochs_scale_jobs(tmp_path, pacs_env):
    """One pretraining per arm keeping the probed epochs, a probe of each kept checkpoint, the
    arms differing only in their overrides; the probe epochs must include the last."""
    from reproduction.adios.epochs import EPOCHS, EpochSettings, epochs_jobs

    jobs = {j.name: j for j in epochs_jobs(tmp_path / "out")}
    assert [n for n in jobs if n.startswith("pretrain/")] == ["pretrain/simclr", "pretrain/adios",
                                                              "pretrain/adios_s"]
    assert sorted(n for n in jobs if n.startswith("probe/")) == sorted(
        ["probe/random_init"] + [f"probe/{a}_ep{e}" for a in ("simclr", "adios", "adios_s") for e in (2, 5, 10)])
    argvs = {}
    for arm in ("simclr", "adios", "adios_s"):
        argv = jobs[f"pretrain/{arm}"].argv
        assert argv[argv.index("--keep-epochs") + 1] == "2,5,10" and "max_epochs=10" in argv
        argvs[arm] = {a for a in argv[argv.index("--") + 1:] if not a.startswith("name=")}
        probe = jobs[f"probe/{arm}_ep5"]
        assert probe.after == (f"pretrain/{arm}",) and f"arms/{arm}/epoch5.ckpt" in probe.argv
    assert argvs["simclr"] - argvs["adios"] == {"method=simclr"}
    assert argvs["adios_s"] - argvs["adios"] == {"++method_kwargs.single_mask=true"}
    assert EPOCHS.epochs == 10 and EPOCHS.probe_epochs == (2, 5, 10) and EPOCHS.crop == 32
    with pytest.raises(ValueError, match="include the last"):
        epochs_jobs(tmp_path / "bad", EpochSettings(epochs=10, probe_epochs=(2, 5)))


def test_epochs_report_gaps_to_simclr(tmp_path):
    """The gap of each arm to SimCLR at each probed epoch is the difference of the probe files'
    accuracies; a missing probe is listed; the plot is written."""
    from reproduction.adios.epochs import epochs_report

    rng = np.random.default_rng(1)
    acc = {}
    for arm in ("simclr", "adios", "adios_s"):
        for e in (2, 5, 10):
            acc[arm, e] = rng.uniform(20, 60, size=2).round(2)
            _fake_probe(tmp_path, f"{arm}_ep{e}", *acc[arm, e])
    _fake_probe(tmp_path, "random_init", 45.0, 44.0)
    (tmp_path / "probes" / "adios_s_ep5.json").unlink()
    report = epochs_report(tmp_path)
    rows = {(r["key"], r["epoch"]): r for r in report.data["rows"]}
    for arm in ("adios", "adios_s"):
        for e in (2, 5, 10):
            if (arm, e) == ("adios_s", 5):
                assert (arm, e) not in rows
                continue
            assert rows[arm, e]["linear_gap"] == pytest.approx(acc[arm, e][0] - acc["simclr", e][0])
            assert rows[arm, e]["knn_gap"] == pytest.approx(acc[arm, e][1] - acc["simclr", e][1])
    assert rows["simclr", 2]["linear_gap"] is None
    gap = acc["adios", 10][0] - acc["simclr", 10][0]
    assert f"{acc['adios', 10][0]:.1f} ({gap:+.1f})" in report.markdown
    assert report.data["missing"] == ["adios_s_ep5"]
    assert report.compare[("PACS", "SimCLR+ADIOS (10 epochs)", experiment.LINEAR_METRIC)] == pytest.approx(
        acc["adios", 10][0])
    assert report.figures[0] == "adios_epochs.png" and (tmp_path / "adios_epochs.png").stat().st_size > 5_000
