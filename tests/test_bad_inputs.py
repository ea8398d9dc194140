"""Every bad input gets one clear line (issue 15, item 4): one table over every entry point.

Each row is a command line and a piece of the message it must give. The command must exit with
status 2 and print exactly one line containing ``error:`` that names the flag or key and the fix,
no traceback, and leave the work folder exactly as it was (files, folders and their bytes).
``{w}`` in a row is the work folder, which holds a regular file ``a_file``, a folder of someone
else's ``foreign/notes.txt``, an empty folder ``empty``, a ``gradmatch reproduce`` folder
``rep``; ``{preds}`` a predictions folder
with the files of one replicate and no manifest.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_wilds_runner import TINY

from gradmatch.cli import main as gradmatch_main

KW = json.dumps(TINY)


def train(*extra, out="{w}/run"):
    """A ``gradmatch train`` on toy CdSprites-N that is valid apart from ``extra``."""
    return ["train", "--dataset", "cdsprites", "--dataset-kwargs", KW, "--out", out,
            "--max-steps", "4", "--no-progress", *extra]


#: (entry point, argv, what the error line must say)
ROWS = [
    # gradmatch train: numeric ranges
    ("gradmatch", train("--eval-every", "-1"), "--eval-every must be an integer >= 0, got -1"),
    ("gradmatch", train("--checkpoint-every", "0"), "--checkpoint-every must be an integer >= 1"),
    ("gradmatch", train("--log-every", "0"), "--log-every must be an integer >= 1"),
    ("gradmatch", train("--gip-every", "-2"), "--gip-every must be an integer >= 0"),
    ("gradmatch", train("--num-workers", "-1"), "--num-workers must be an integer >= 0"),
    ("gradmatch", train("--num-nodes", "0"), "--num-nodes must be an integer >= 1"),
    ("gradmatch", train("--seed", "-1"), "--seed must be an integer >= 0"),
    ("gradmatch", train("--seed", str(2 ** 32)), "--seed must be < 2**32"),
    ("gradmatch", train("--erm-warmup-steps", "-5"), "--erm-warmup-steps must be an integer >= 0"),
    ("gradmatch", train("--lr", "nan"), "--lr must be positive, got nan"),
    ("gradmatch", train("--lr", "-0.1"), "--lr must be positive"),
    ("gradmatch", train("--batch-size", "0"), "--batch-size must be positive"),
    ("gradmatch", train("--meta-lr", "0"), "--meta-lr must be positive"),
    ("gradmatch", train("--meta-steps", "0"), "--meta-steps must be positive"),
    ("gradmatch", train("--epochs", "0"), "--epochs must be positive"),
    ("gradmatch", train("--max-steps", "-1"), "--max-steps must be positive"),
    ("gradmatch", train("--optimizer", "sgd", "--momentum", "1.5"), "--momentum must be in [0, 1)"),
    ("gradmatch", train("--momentum", "0.5"), "--momentum applies to --optimizer sgd only"),
    ("gradmatch", train("--frac", "0"), "--frac must be in (0, 1]"),
    ("gradmatch", train("--frac", "1.5"), "--frac must be in (0, 1]"),
    ("gradmatch", train("--threads", "0"), "--threads must be an integer >= 1"),
    ("gradmatch", train("--devices", "0"), "--devices: '0': use a count >= 1"),
    ("gradmatch", train("--precision", "64"), "precision"),
    ("gradmatch", train("--accelerator", "cpu", "--sync-batchnorm"), "--sync-batchnorm needs CUDA"),
    ("gradmatch", train("--optimizer", "rmsprop"), "--optimizer: invalid choice: 'rmsprop'"),
    ("gradmatch", train("--algorithm", "maml"), "--algorithm: invalid choice: 'maml'"),
    ("gradmatch", train("--step-size", "big"), "--step-size: invalid choice: 'big'"),
    ("gradmatch", train("--max-steps", "ten"), "--max-steps: invalid int value: 'ten'"),
    # gradmatch train: names that only the dataset knows, checked before the first step
    ("gradmatch", train("--selection-metric", "foo"), "--selection-metric 'foo': cdsprites's eval gives"),
    ("gradmatch", train("--selection-split", "dev"), "--selection-split 'dev': cdsprites has id_val, val, test"),
    ("gradmatch", train("--eval-splits", "dev"), "--eval-splits: unknown split(s) dev"),
    ("gradmatch", train("--eval-splits", "train"), "--eval-splits: 'train' is not evaluated"),
    ("gradmatch", train("--meta-steps", "9"), "lower --meta-steps"),
    ("gradmatch", train("--fold", "A"), "--fold: cdsprites replicates are seeds"),
    ("gradmatch", ["train", "--dataset", "camelyon", "--out", "{w}/run"], "unknown --dataset 'camelyon'"),
    # gradmatch train: dataset kwargs
    ("gradmatch", train()[:4] + ['{"num_domain": 4}'] + train()[5:], "--dataset-kwargs: cdsprites takes no 'num_domain'"),
    ("gradmatch", train()[:4] + ['{"num_domains": 0}'] + train()[5:], "num_domains must be an integer >= 1, got 0"),
    ("gradmatch", train()[:4] + ['{"image_size": 4}'] + train()[5:], "image_size must be an integer >= 8"),
    ("gradmatch", train()[:4] + ['{"data_seed": -3}'] + train()[5:], "data_seed must be an integer >= 0"),
    ("gradmatch", train()[:4] + ["{num_domains: 4}"] + train()[5:], "--dataset-kwargs: not valid JSON"),
    ("gradmatch", train()[:4] + ["[4]"] + train()[5:], "is not a JSON object"),
    # gradmatch train: the output folder
    ("gradmatch", train(out="{w}/a_file"), "--out {w}/a_file is a file, not a folder"),
    ("gradmatch", train(out="{w}/a_file/run"), "{w}/a_file is a file, so no folder can be made under it"),
    ("gradmatch", train(out="{w}/foreign"), "{w}/foreign is not empty; choose another --out"),
    ("gradmatch", train("--resume", out="{w}/empty"), "--resume: no checkpoint.pt in {w}/empty"),
    # gradmatch evaluate
    ("gradmatch", ["evaluate", "{w}/nothing", "--dataset", "cdsprites"], "no prediction folder {w}/nothing/cdsprites"),
    ("gradmatch", ["evaluate", "{w}/foreign", "--dataset", "mnist"], "no official metric list for 'mnist'"),
    ("gradmatch", ["evaluate", "{preds}", "--dataset", "cdsprites", "--replicate", "0"], "unrecognized arguments: --replicate"),
    ("gradmatch", ["evaluate", "{preds}", "--dataset", "cdsprites", "--dataset-kwargs", '{"size": 3}'],
     "--dataset-kwargs: cdsprites takes no 'size'"),
    ("gradmatch", ["evaluate", "{preds}", "--dataset", "cdsprites", "--allow-partial", "--dataset-kwargs", KW],
     "cdsprites predictions without a manifest: name their data realisation"),
    # gradmatch (top level)
    ("gradmatch", ["fit"], "invalid choice: 'fit'"),
    ("gradmatch", ["domainbed"], "the following arguments are required: ACTION"),
]

# adios-ssl: solo-learn's main_pretrain.py / main_linear.py with ADIOS registered, checked before
# torch is imported (the config composes, overrides apply, ADIOS keys, data folders)
C = ["--config-path", "pkg://adios_ssl.configs", "--config-name", "cpu_simclr_adios"]
L = ["--config-path", "pkg://adios_ssl.configs", "--config-name", "cpu_linear"]
ADIOS_ROWS = [
    (["pretrain", *C, "method_kwargs.N=0"], "method_kwargs.N=0: the number of masks must be an integer >= 1"),
    (["pretrain", *C, "method_kwargs.N=2.5"], "method_kwargs.N=2.5: the number of masks must be an integer >= 1"),
    (["pretrain", *C, "augmentations.0.crop_size=50"], "augmentations.0.crop_size=50 is not a multiple of 8"),
    (["pretrain", *C, "augmentations.0.crop_size=16"], "the masking UNet takes crops of 32 to 255 px"),
    (["pretrain", *C, "+method_kwargs.img_size=32"], "method_kwargs.img_size=32 differs from the training crops"),
    (["pretrain", *C, "method_kwargs.mask_fbase=12"], "method_kwargs.mask_fbase=12 must be a multiple of 8"),
    (["pretrain", *C, "method_kwargs.alpha_sparsity=-1"], "method_kwargs.alpha_sparsity=-1 must be a number >= 0"),
    (["pretrain", *C, "++method_kwargs.num_masks=4"], "did you mean method_kwargs.N?"),
    (["pretrain", *C, "method_kwargs.unet_norm=bn"], "method_kwargs.unet_norm='bn': choose one of gn, in, none"),
    (["pretrain", *C, "+method_kwargs.pairs=[both]"], "method_kwargs.pairs=['both']: include 'masked' or 'none'"),
    (["pretrain", *C, "+method_kwargs.symmetric_pairs=false"], "only simsiam_adios defines"),
    (["pretrain", *C, "+method_kwargs.mask_pictures.every_n_epochs=0"],
     "method_kwargs.mask_pictures.every_n_epochs=0 must be an integer >= 1"),
    (["pretrain", *C, "++accumulate_grad_batches=2"], "accumulate_grad_batches=2: ADIOS alternates"),
    (["pretrain", *C, "scheduler.name=exponential"], "scheduler.name='exponential'"),
    (["pretrain", *C, "method=simclr_adio"], "did you mean method=simclr_adios?"),
    (["pretrain", *C, "method_kwargs.img_size=64"], "To append to your config use +method_kwargs.img_size=64"),
    (["pretrain", *C, "--epochs", "3"], "unrecognized argument '--epochs'"),
    (["pretrain", *C], "data.train_path is not set: add data.train_path="),
    (["pretrain", *C, "data.train_path={w}/no-images"], "data.train_path={w}/no-images is not a folder"),
    (["pretrain", *C, "optimizer.batch_size=0"], "optimizer.batch_size=0 must be an integer >= 1"),
    (["pretrain"], "--config-name is missing"),
    (["pretrain", "--config-name", "cpu_simclr_adios"], "--config-path is missing: add --config-path"),
    (["pretrain", "--config-path", "pkg://adios_ssl.configs", "--config-name", "cpu_simclr"],
     "did you mean --config-name cpu_simclr_adios?"),
    (["linear", *L], "pretrained_feature_extractor is not set"),
    (["linear", *L, "pretrained_feature_extractor={w}/model.ckpt"], "pretrained_feature_extractor={w}/model.ckpt does not exist"),
    (["solo", "clone", "--dest", "{w}/foreign"], "--dest {w}/foreign: {w}/foreign exists and is not empty"),
    (["solo"], "the following arguments are required: solo_command"),
]
ROWS += [("adios-ssl", argv, expected) for argv, expected in ADIOS_ROWS]
ROWS += [("adios_ssl.probe", ["masks", "--data", "{w}/empty", "--ckpt", "none", "--out", "{w}/m.png"],
          "--ckpt none has no masker and no mask generator: pass a solo-learn checkpoint")]

# gradmatch demo / reproduce / report / domainbed
ROWS += [
    ("gradmatch", ["demo", "--seeds", "0", "--out", "{w}/demo"], "--seeds must be an integer >= 1, got 0"),
    ("gradmatch", ["demo", "--steps", "0", "--out", "{w}/demo"], "--steps must be an integer >= 1, got 0"),
    ("gradmatch", ["demo", "--num-domains", "1", "--out", "{w}/demo"], "--num-domains must be an integer >= 2, got 1"),
    ("gradmatch", ["demo", "--batch-size", "0", "--out", "{w}/demo"], "--batch-size must be an integer >= 1, got 0"),
    ("gradmatch", ["demo", "--meta-lr", "nan", "--out", "{w}/demo"], "--meta-lr must be a positive finite number, got nan"),
    ("gradmatch", ["demo", "--meta-lr", "inf", "--out", "{w}/demo"], "--meta-lr must be a positive finite number, got inf"),
    ("gradmatch", ["demo", "--inner-lr", "-0.1", "--out", "{w}/demo"], "--inner-lr must be a positive finite number, got -0.1"),
    ("gradmatch", ["demo", "--jobs", "0", "--out", "{w}/demo"], "--jobs must be an integer >= 1, got 0"),
    ("gradmatch", ["demo", "--threads", "0", "--out", "{w}/demo"], "--threads must be an integer >= 1, got 0"),
    ("gradmatch", ["demo", "--out", "{w}/a_file"], "--out {w}/a_file is a file, not a folder"),
    ("gradmatch", ["demo", "--out", "{w}/a_file/demo"], "{w}/a_file is a file, so no folder can be made under it"),
    ("gradmatch", ["demo", "--out", "{w}/foreign"], "--out {w}/foreign is not empty and holds no demo (demo_config.json)"),
    ("gradmatch", ["demo", "--recipe", "rmsprop", "--out", "{w}/demo"], "--recipe: invalid choice: 'rmsprop'"),
    ("gradmatch", ["reproduce", "cdsprites", "--scale", "cpu", "--out", "{w}/r", "--jobs", "0", "--dry-run"],
     "--jobs must be an integer >= 1, got 0"),
    ("gradmatch", ["reproduce", "cdsprites", "--scale", "cpu", "--out", "{w}/a_file", "--dry-run"],
     "--out {w}/a_file is a file, not a folder"),
    ("gradmatch", ["reproduce", "wilds", "--scale", "cpu", "--out", "{w}/a_file/r"],
     "{w}/a_file is a file, so no folder can be made under it; choose another --out"),
    ("gradmatch", ["reproduce", "cdsprites", "--scale", "cpu", "--out", "{w}/foreign", "--dry-run"],
     "--out {w}/foreign is not empty and holds no reproduce.json"),
    ("gradmatch", ["reproduce", "cdsprites", "--scale", "paper", "--out", "{w}/rep", "--dry-run"],
     "--out {w}/rep holds the cdsprites experiment at cpu scale"),
    ("gradmatch", ["reproduce", "mnist", "--scale", "cpu", "--out", "{w}/r"], "invalid choice: 'mnist'"),
    ("gradmatch", ["reproduce", "gpu-check", "--scale", "cpu", "--out", "{w}/r", "--dry-run"],
     "--scale cpu: the gpu-check experiment has scales gpu, rehearsal"),
    ("gradmatch", ["reproduce", "cdsprites", "--scale", "rehearsal", "--out", "{w}/r", "--dry-run"],
     "--scale rehearsal: the cdsprites experiment has scales cpu, paper"),
    ("gradmatch", ["report", "{w}/nothing"], "{w}/nothing does not exist: `gradmatch report DIR` reads the --out folder"),
    ("gradmatch", ["report", "{w}/a_file"], "{w}/a_file is a file, not a folder: `gradmatch report DIR` reads"),
    ("gradmatch", ["report", "{w}/foreign"], "{w}/foreign is not a `gradmatch reproduce` folder: it has no reproduce.json"),
    ("gradmatch", ["report", "{w}/rep", "--copy-to", "{w}/rep"], "--copy-to {w}/rep is the reproduce folder itself"),
    ("gradmatch", ["report", "{w}/rep", "--copy-to", "{w}/a_file"], "--copy-to {w}/a_file is a file, not a folder"),
    ("gradmatch", ["domainbed", "install-hook", "--site-dir", "{w}/nowhere"],
     "--site-dir {w}/nowhere does not exist: pass an existing site-packages folder"),
    ("gradmatch", ["domainbed", "install-hook", "--site-dir", "{w}/a_file"], "--site-dir {w}/a_file is a file, not a folder"),
    ("gradmatch", ["domainbed", "remove-hook", "--site-dir", "{w}/nowhere"], "--site-dir {w}/nowhere does not exist"),
]

# DomainBed's own train.py through the plugin's wrapper (checked before DomainBed makes --output_dir)
DB = ["--algorithm", "FishFast", "--dataset", "Debug28", "--output_dir", "{w}/db"]
DB_ROWS = [
    (DB + ["--hparams", '{"meta_lr": -1}'], "FishFast hparam meta_lr must be a positive finite number, got -1: "
                                             "set it with --hparams '{\"meta_lr\": 0.5}'"),
    (DB + ["--hparams", '{"fish_inner_optimizer": "rmsprop"}'], 'FishFast hparam fish_inner_optimizer must be one of "adam", "sgd"'),
    (DB + ["--hparams", '{"fish_gip_evry": 5}'], "unknown FishFast hparam 'fish_gip_evry' (in --hparams?)"),
    (DB + ["--hparams", "{meta_lr: 1}"], "--hparams is not valid JSON"),
    (DB + ["--algorithm", "FishFst"], "--algorithm FishFst is not a DomainBed algorithm: choose one of"),
    (DB + ["--dataset", "CMNIST"], "--dataset CMNIST is not a DomainBed dataset: choose one of"),
    (DB + ["--test_envs", "3"], "--test_envs 3 is not an environment of Debug28, whose environments are 0-2"),
    (DB + ["--algorithm", "IDGM", "--test_envs", "0", "1"], "IDGM matches gradients between training domains and needs at least 2, got 1"),
    (DB + ["--output_dir", "{w}/a_file"], "--output_dir {w}/a_file is a file: choose a folder path"),
]
ROWS += [("gradmatch.domainbed.train", argv, expected) for argv, expected in DB_ROWS]


def snapshot(folder: Path) -> dict:
    """Every path under ``folder`` with its bytes (files) or None (folders)."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))}


@pytest.fixture()
def work(tmp_path):
    (tmp_path / "a_file").write_text("not a folder\n")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("someone else's\n")
    (tmp_path / "empty").mkdir()
    (tmp_path / "rep").mkdir()  # a reproduce folder (cdsprites at cpu scale, nothing run yet)
    (tmp_path / "rep" / "reproduce.json").write_text('{"experiment": "cdsprites", "scale": "cpu", "jobs": []}')
    preds = tmp_path / "preds" / "cdsprites"
    preds.mkdir(parents=True)
    for split in ("id_val", "val", "test"):
        (preds / f"cdsprites_split:{split}_seed:0_epoch:best_pred.csv").write_text("0\n1\n")
    return tmp_path


def _missing(entry, argv):
    """Why ``entry`` cannot run here (no upstream checkout), or None."""
    if entry == "gradmatch.domainbed.train":
        from gradmatch.domainbed.locate import DOMAINBED as repo
    elif entry == "adios-ssl" and argv[0] in ("pretrain", "linear"):
        from adios_ssl.sololearn.locate import SOLO_LEARN as repo
    else:
        return None
    try:
        repo.find_checkout()
    except ImportError as err:
        return f"needs a {repo.name} checkout: {err}"
    return None


def run_entry_point(entry, argv, capsys):
    from adios_ssl.cli import main as adios_main
    from adios_ssl.probe import main as probe_main
    from gradmatch.domainbed.train import main as domainbed_train_main

    mains = {"gradmatch": gradmatch_main, "adios-ssl": adios_main, "adios_ssl.probe": probe_main,
             "gradmatch.domainbed.train": domainbed_train_main}
    try:
        code = mains[entry](argv)
    except SystemExit as exit_:  # argparse
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_table_has_at_least_40_bad_inputs():
    assert len(ROWS) >= 40
    assert {entry for entry, _, _ in ROWS} == {"gradmatch", "adios-ssl", "adios_ssl.probe", "gradmatch.domainbed.train"}
    commands = {argv[0] for entry, argv, _ in ROWS if entry == "gradmatch"}
    assert commands >= {"train", "evaluate", "demo", "reproduce", "report", "domainbed"}
    assert len({json.dumps(r[1]) for r in ROWS}) == len(ROWS), "a row is repeated"


@pytest.mark.parametrize("entry,argv,expected", ROWS, ids=[f"{i:02d}" for i in range(len(ROWS))])
def test_a_bad_input_gets_one_clear_line(entry, argv, expected, work, capsys, monkeypatch):
    missing = _missing(entry, argv)
    if missing:
        pytest.skip(missing)
    monkeypatch.chdir(work)  # whatever a command would write into the working folder shows up
    def fill(text):
        return text.replace("{w}", str(work)).replace("{preds}", str(work / "preds"))

    argv, expected = [fill(a) for a in argv], fill(expected)
    before = snapshot(work)
    code, out, err = run_entry_point(entry, argv, capsys)
    errors = [line for line in (out + err).splitlines() if "error:" in line]
    assert code == 2, (code, out, err)
    assert "Traceback" not in out + err
    assert len(errors) == 1, err
    assert expected in errors[0], errors[0]
    assert snapshot(work) == before, "the command changed the work folder"


def test_the_console_script_gives_the_same_line(work):
    """Through the installed ``gradmatch`` script, as a user runs it: a separate process."""
    script = Path(sys.executable).with_name("gradmatch")
    before = snapshot(work)
    proc = subprocess.run([str(script), *train("--eval-every", "-1", out=f"{work}/run")], text=True,
                          capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert [line for line in proc.stderr.splitlines() if "error:" in line] == [
        "gradmatch: error: --eval-every must be an integer >= 0, got -1"]
    assert snapshot(work) == before


def test_wilds_flag_spellings_are_aliases():
    """WILDS users' ``--root_dir``, ``--log_dir``, ``--n_epochs``, ``--val_metric`` mean ours."""
    from gradmatch.cli import build_parser

    parser = build_parser()
    ours = parser.parse_args(["train", "--dataset", "cdsprites", "--out", "o", "--root-dir", "d",
                              "--epochs", "3", "--selection-metric", "acc_wg"])
    wilds = parser.parse_args(["train", "--dataset", "cdsprites", "--log_dir", "o", "--root_dir", "d",
                               "--n_epochs", "3", "--val_metric", "acc_wg"])
    assert vars(ours) == vars(wilds)
    assert (ours.root_dir, ours.epochs, ours.selection_metric, ours.out) == ("d", 3, "acc_wg", "o")


def test_help_names_every_subcommand_and_every_default():
    import io
    from contextlib import redirect_stdout

    from gradmatch.cli import build_parser

    parser = build_parser()
    text = parser.format_help()
    for name in ("demo", "train", "evaluate", "presets", "reproduce", "report", "domainbed"):
        assert f"\n  {name} " in text, name
    assert "``" not in text and "`" not in text.split("positional arguments")[0]
    sub = parser._subparsers._group_actions[0].choices
    for name, command in sub.items():
        for action in command._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, (name, action.option_strings)
    out = io.StringIO()
    with redirect_stdout(out), pytest.raises(SystemExit):
        parser.parse_args(["train", "--help"])
    assert "(default: 200)" in out.getvalue() and "(default: 32-true)" in out.getvalue()
