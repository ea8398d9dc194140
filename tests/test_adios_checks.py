"""The early checks of an ADIOS run's settings and command line, the run record, the mask
pictures' legend and the warning filters (fast: no training).

- :func:`adios_ssl.sololearn.config.adios_cfg` refuses each bad setting with a message that
  names the key and the fix, and agrees with the masking UNet on which image sizes it can take;
- ``adios-ssl pretrain|linear`` refuses a bad command line in one ``adios-ssl: error:`` line
  with status 2, without importing torch and without writing anything;
- the configs' Hydra callback stops a bad run of solo-learn's own ``main_pretrain.py`` with one
  line, before solo-learn writes anything.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from solo_helpers import write_images

from adios_ssl.sololearn.config import (
    DEFAULTS,
    SHIPPED_METHODS,
    ADIOSConfigError,
    adios_cfg,
    keys_read_in,
    parent_keys_in_checkout,
)

CONFIGS = "pkg://adios_ssl.configs"
SIMCLR_KEYS = {"proj_hidden_dim", "proj_output_dim", "temperature"}


def cfg_with(crop=64, **method_kwargs):
    """A config as Hydra composes the shipped CPU configs (before solo-learn's parse_cfg)."""
    kw = {"proj_hidden_dim": 64, "proj_output_dim": 32, "temperature": 0.2, "N": 4,
          "mask_fbase": 16}
    kw.update(method_kwargs)
    return OmegaConf.create({"method": "simclr_adios", "method_kwargs": kw,
                             "augmentations": [{"crop_size": crop, "num_crops": 2}],
                             "scheduler": {"name": "warmup_cosine"}})


def refusal(cfg, **kwargs) -> str:
    with pytest.raises(ADIOSConfigError) as err:
        adios_cfg(cfg, parent_keys=SIMCLR_KEYS, directional=False, **kwargs)
    return str(err.value)


# ----------------------------------------------------------------------------- adios_cfg

def test_a_good_config_gets_every_adios_key_with_its_default():
    cfg = adios_cfg(cfg_with(), parent_keys=SIMCLR_KEYS, directional=False)
    assert set(DEFAULTS) <= set(cfg.method_kwargs)
    assert cfg.method_kwargs.img_size == 64 and cfg.method_kwargs.N == 4
    assert cfg.method_kwargs.mask_generator == "adversarial"


@pytest.mark.parametrize("setting,expected", [
    ({"N": 0}, "method_kwargs.N=0: the number of masks must be an integer >= 1"),
    ({"N": 2.5}, "method_kwargs.N=2.5"),
    ({"N": "four"}, "method_kwargs.N='four'"),
    ({"alpha_sparsity": -0.5}, "method_kwargs.alpha_sparsity=-0.5 must be a number >= 0"),
    ({"alpha_entropy": math.inf}, "method_kwargs.alpha_entropy=inf must be a number >= 0"),
    ({"mask_lr": 0}, "method_kwargs.mask_lr=0 must be a number > 0"),
    ({"mask_fbase": 12}, "method_kwargs.mask_fbase=12 must be a multiple of 8 with "
                         "method_kwargs.unet_norm=gn (GroupNorm with 8 groups): use 8 or 16"),
    ({"unet_norm": "bn"}, "method_kwargs.unet_norm='bn': choose one of gn, in, none"),
    ({"mask_ratio": 1.5, "mask_generator": "mae"}, "method_kwargs.mask_ratio=1.5 must be a fraction"),
    ({"pairs": "masked"}, "method_kwargs.pairs='masked' must be a list, e.g. method_kwargs.pairs=[masked]"),
    ({"pairs": ["both"], "masked_views": "both"}, "include 'masked' or 'none'"),
    ({"single_mask": "yes"}, "method_kwargs.single_mask='yes' must be true or false"),
    ({"mask_pictures": {"every_n_epochs": 0}}, "method_kwargs.mask_pictures.every_n_epochs=0 must be"),
    ({"mask_pictures": {"each": 2}}, "method_kwargs.mask_pictures.each is not a setting"),
    ({"img_size": 32}, "method_kwargs.img_size=32 differs from the training crops "
                       "(augmentations.0.crop_size=64): the masker sees those crops, so remove "
                       "method_kwargs.img_size or set it to 64"),
])
def test_each_bad_setting_is_refused_naming_the_key_and_the_fix(setting, expected):
    assert expected in refusal(cfg_with(**setting))


def test_a_typo_in_a_key_is_refused_with_the_likely_key():
    message = refusal(cfg_with(alpha_sparsty=0.5))
    assert message.startswith("method_kwargs.alpha_sparsty is not a setting of simclr_adios: "
                              "did you mean method_kwargs.alpha_sparsity?")
    assert "reads proj_hidden_dim, proj_output_dim, temperature" in message
    assert "did you mean method_kwargs.N?" in refusal(cfg_with(num_masks=3))
    # without knowing the parent's keys, unknown keys cannot be told from the parent's
    adios_cfg(cfg_with(alpha_sparsty=0.5), directional=False)


def test_settings_outside_method_kwargs_that_adios_cannot_run_with():
    cfg = cfg_with()
    cfg.accumulate_grad_batches = 2
    assert "accumulate_grad_batches=2: ADIOS alternates" in refusal(cfg)
    cfg = cfg_with()
    cfg.scheduler.name = "exponential"
    assert "scheduler.name='exponential'" in refusal(cfg) and "warmup_cosine" in refusal(cfg)
    cfg = cfg_with()
    cfg.augmentations.append({"crop_size": 32, "num_crops": 4})  # small crops (multi-crop)
    assert "num_large_crops=2, num_small_crops=4" in refusal(cfg)
    assert "only simsiam_adios defines" in refusal(cfg_with(symmetric_pairs=False))
    adios_cfg(cfg_with(symmetric_pairs=False), parent_keys=SIMCLR_KEYS, directional=True)


@pytest.mark.parametrize("crop,expected", [
    (50, "augmentations.0.crop_size=50 is not a multiple of 8, which a 4-block masking UNet "
         "needs (it halves the image 3 times): use a crop size of 48 or 56"),
    (72, "augmentations.0.crop_size=72 is not a multiple of 16, which a 5-block masking UNet "
         "needs (it halves the image 4 times): use a crop size of 64 or 80, or set "
         "method_kwargs.unet_blocks=4"),
    (16, "augmentations.0.crop_size=16: the masking UNet takes crops of 32 to 255 px"),
    (300, "augmentations.0.crop_size=300: the masking UNet takes crops of 32 to 255 px"),
])
def test_crop_sizes_the_masker_cannot_take_name_the_sizes_it_can(crop, expected):
    assert expected in refusal(cfg_with(crop=crop))


def test_the_early_size_check_agrees_with_the_masking_network():
    """For every crop size and depth, adios_cfg accepts exactly what MaskingNetwork builds."""
    from adios_ssl.masker import MaskingNetwork

    for blocks in (None, 4, 5, 6):
        for size in range(8, 270, 2):
            try:
                adios_cfg(cfg_with(crop=size, unet_blocks=blocks, mask_fbase=8),
                          parent_keys=SIMCLR_KEYS)
                accepted = True
            except ADIOSConfigError:
                accepted = False
            try:
                MaskingNetwork(size, 2, fbase=8, num_blocks=blocks)
                built = True
            except ValueError:
                built = False
            assert accepted == built, (size, blocks)


def test_baselines_skip_the_unet_checks_and_mae_needs_a_whole_patch():
    adios_cfg(cfg_with(crop=50, mask_generator="random"), parent_keys=SIMCLR_KEYS)
    assert "the mae baseline hides 16-px patches" in refusal(cfg_with(crop=8, mask_generator="mae"))


def test_the_baseline_names_are_the_generators_the_config_accepts():
    from adios_ssl.baselines import BASELINE_MASKS
    from adios_ssl.choices import BASELINE_GENERATORS, UNET_BLOCKS
    from adios_ssl.masker import _ENCODER_WIDTHS

    assert tuple(BASELINE_MASKS) == BASELINE_GENERATORS
    assert tuple(sorted(_ENCODER_WIDTHS)) == UNET_BLOCKS


def test_keys_read_in_source():
    assert keys_read_in(['cfg.method_kwargs.tau\nomegaconf_select(cfg, "method_kwargs.lamb", 1)',
                         'cfg.method_kwargs = {}']) == {"tau", "lamb"}


# ----------------------------------------------------------------------------- with solo-learn

@pytest.fixture(scope="module")
def checkout() -> Path:
    from solo_helpers import checkout_or_skip

    return checkout_or_skip()


def test_shipped_methods_table_matches_the_classes_and_the_checkout(checkout):
    """The torch-free table the command line is checked with describes the classes solo-learn
    builds: same defaults, same directional loss, same parent keys read from the checkout."""
    from adios_ssl.sololearn.register import register

    register()  # makes solo-learn importable
    from adios_ssl.sololearn.method import ADIOS_METHODS

    assert set(ADIOS_METHODS) == set(SHIPPED_METHODS)
    for name, spec in SHIPPED_METHODS.items():
        cls = ADIOS_METHODS[name]
        assert cls.adios_defaults == dict(spec.defaults), name
        assert hasattr(cls, "adios_directional_loss") == spec.directional, name
        assert cls.adios_parent_keys == parent_keys_in_checkout(checkout, spec.parent), name
    assert parent_keys_in_checkout(checkout, "simclr") == SIMCLR_KEYS


def test_the_hydra_callback_refuses_a_bad_job_before_it_starts(tmp_path):
    """RegisterADIOSMethods.on_job_start: a single run ends with one line (SystemExit, which
    Hydra does not turn into a warning); in a multirun the line is printed and the job goes
    on (to fail when solo-learn builds the method)."""
    from hydra import compose, initialize_config_module

    from adios_ssl.sololearn.register import RegisterADIOSMethods

    with initialize_config_module("adios_ssl.configs", version_base="1.2"):
        cfg = compose("cpu_byol_adios", overrides=["data.train_path=x", "method_kwargs.N=0"],
                      return_hydra_config=True)
    with pytest.raises(SystemExit) as stop:
        RegisterADIOSMethods().on_job_start(config=cfg)
    assert str(stop.value).endswith("error: method_kwargs.N=0: the number of masks must be an "
                                    "integer >= 1 (the paper uses 3 to 6)")
    cfg.method_kwargs.N = 4
    RegisterADIOSMethods().on_job_start(config=cfg)  # a good config passes


@pytest.mark.slow
def test_main_pretrain_run_directly_stops_a_bad_config_in_one_line(checkout, tmp_path):
    images = write_images(tmp_path / "images", {"train": 1})
    work = tmp_path / "work"
    work.mkdir()
    run = subprocess.run(
        [sys.executable, str(checkout / "main_pretrain.py"), "--config-path", CONFIGS,
         "--config-name", "cpu_simclr_adios", f"data.train_path={images / 'train'}",
         "augmentations.0.crop_size=50"], cwd=work, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore"))
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1] == (
        "main_pretrain.py: error: augmentations.0.crop_size=50 is not a multiple of 8, which a "
        "4-block masking UNet needs (it halves the image 3 times): use a crop size of 48 or 56")
    assert "Traceback" not in run.stderr and list(work.iterdir()) == []


# ----------------------------------------------------------------------------- adios-ssl

@pytest.fixture()
def images(tmp_path_factory) -> Path:
    return write_images(tmp_path_factory.mktemp("images"), {"train": 1}, classes=6)


def refuse(argv, tmp_path, monkeypatch, capsys) -> str:
    """Run ``adios-ssl ARGV`` in the empty folder ``tmp_path/work``; assert status 2, one line
    on stderr, nothing on stdout, nothing written; return the line."""
    from adios_ssl.cli import main

    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    monkeypatch.chdir(work)
    monkeypatch.setenv("PYTHONWARNINGS", "")
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1 and err.startswith("adios-ssl: error: "), err
    assert list(work.iterdir()) == []
    return err.strip()


def pretrain(*overrides):
    return ["pretrain", "--config-path", CONFIGS, "--config-name", "cpu_simclr_adios", *overrides]


@pytest.mark.parametrize("overrides,expected", [
    (("method_kwargs.N=0",), "method_kwargs.N=0: the number of masks must be an integer >= 1"),
    (("+method_kwargs.img_size=32",), "method_kwargs.img_size=32 differs from the training crops"),
    (("++method_kwargs.Nmasks=3",), "did you mean method_kwargs.N?"),
    (("method=simclr_adio",), "did you mean method=simclr_adios?"),
    (("method_kwargs.img_size=32",), "To append to your config use +method_kwargs.img_size=32"),
])
def test_adios_ssl_pretrain_refuses_bad_settings_in_one_line(checkout, images, tmp_path,
                                                             monkeypatch, capsys, overrides,
                                                             expected):
    line = refuse(pretrain(f"data.train_path={images / 'train'}", *overrides), tmp_path,
                  monkeypatch, capsys)
    assert expected in line


def test_adios_ssl_refuses_bad_command_lines(checkout, images, tmp_path, monkeypatch, capsys):
    assert "--config-name is missing" in refuse(["pretrain"], tmp_path, monkeypatch, capsys)
    assert "did you mean --config-name cpu_simclr_adios?" in refuse(
        ["pretrain", "--config-path", CONFIGS, "--config-name", "cpu_simclr"], tmp_path,
        monkeypatch, capsys)
    assert "data.train_path is not set: add data.train_path=" in refuse(
        pretrain(), tmp_path, monkeypatch, capsys)
    assert "data.train_path=/no/such/folder is not a folder" in refuse(
        pretrain("data.train_path=/no/such/folder"), tmp_path, monkeypatch, capsys)
    assert "unrecognized argument '--epochs'" in refuse(
        pretrain(f"data.train_path={images / 'train'}", "--epochs", "3"), tmp_path,
        monkeypatch, capsys)
    linear = ["linear", "--config-path", CONFIGS, "--config-name", "cpu_linear",
              f"data.train_path={images / 'train'}", f"data.val_path={images / 'train'}"]
    assert "pretrained_feature_extractor is not set" in refuse(linear, tmp_path, monkeypatch,
                                                               capsys)
    assert "pretrained_feature_extractor=/no/model.ckpt does not exist" in refuse(
        linear + ["pretrained_feature_extractor=/no/model.ckpt"], tmp_path, monkeypatch, capsys)
    few = write_images(tmp_path / "few", {"train": 1}, classes=3)
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"PK")
    assert "has 3 class sub-folder(s): main_linear.py reports top-5 accuracy" in refuse(
        linear[:5] + [f"data.train_path={few / 'train'}", f"data.val_path={few / 'train'}",
                      f"pretrained_feature_extractor={ckpt}"], tmp_path, monkeypatch, capsys)


def test_a_bad_setting_is_refused_before_torch_is_imported(checkout, images, tmp_path):
    code = ("import sys; from adios_ssl.cli import main; "
            f"rc = main({pretrain(f'data.train_path={images}', 'method_kwargs.N=0')!r}); "
            "print(rc, 'torch' in sys.modules, 'solo' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert run.stdout.split() == ["2", "False", "False"], run.stderr
    assert run.stderr.startswith("adios-ssl: error: method_kwargs.N=0")


def test_clone_into_a_non_empty_folder_is_refused_naming_the_flag(tmp_path, monkeypatch, capsys):
    dest = tmp_path / "dest"
    dest.mkdir()  # outside the work folder refuse() checks
    (dest / "keep.txt").write_text("mine")
    line = refuse(["solo", "clone", "--dest", str(dest)], tmp_path, monkeypatch, capsys)
    assert line.startswith(f"adios-ssl: error: --dest {dest}: ") and "not empty" in line


def test_a_missing_checkout_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SOLO_LEARN_DIR", str(tmp_path / "none"))
    line = refuse(pretrain("data.train_path=x"), tmp_path, monkeypatch, capsys)
    assert "no solo-learn checkout at $SOLO_LEARN_DIR=" in line


# ----------------------------------------------------------------------------- outputs

def test_result_files_are_strict_json(tmp_path):
    from runkit.jsonio import write_json

    path = write_json(tmp_path / "r.json", {"a": math.nan, "b": [1.0, -math.inf], "c": (2, "x")})
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"a": None, "b": [1.0, None], "c": [2, "x"]}


def test_mask_pictures_have_a_title_and_a_legend_for_the_partition():
    import torch

    from adios_ssl.render import CAPTION, mask_grid_figure, method_label

    masks = torch.softmax(torch.randn(2, 3, 32, 32), dim=1)
    fig = mask_grid_figure(torch.rand(2, 3, 32, 32), masks, title="SimCLR + ADIOS: epoch 0")
    heading = fig._suptitle.get_text()
    assert heading.startswith("SimCLR + ADIOS: epoch 0") and CAPTION.split(";")[0] in heading
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["mask 1", "mask 2", "mask 3"]
    assert legend.get_title().get_text() == "partition colours"
    colours = [tuple(p.get_facecolor()) for p in legend.get_patches()]
    titles = [ax.get_title() for ax in fig.axes[:5]]
    assert titles == ["input", "\u25a0 mask 1", "\u25a0 mask 2", "\u25a0 mask 3", "partition"]
    assert [tuple(fig.axes[k].title.get_color()) for k in (1, 2, 3)] == colours
    assert method_label("simclr_adios") == "SimCLR + ADIOS" == method_label("SimCLRADIOS")
    assert method_label("barlow_twins") == "Barlow Twins"


def test_known_third_party_warnings_are_filtered_and_others_are_not(monkeypatch):
    from adios_ssl.quiet import CHILD_WARNINGS, quiet_known_warnings

    monkeypatch.setenv("PYTHONWARNINGS", "default")
    cases = [("pkg_resources is deprecated as an API. See ...", UserWarning,
              "torchmetrics.utilities.imports"),
             ("Importing from timm.models.helpers is deprecated, please import via timm.models",
              FutureWarning, "timm.models.helpers"),
             ("resource_tracker: There appear to be 3 leaked semaphore objects to clean up at "
              "shutdown", UserWarning, "joblib.externals.loky.backend.resource_tracker")]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_known_warnings()
        for message, category, module in cases:
            warnings.warn_explicit(message, category, "f.py", 1, module=module)
            warnings.warn_explicit(message, category, "f.py", 1, module="mypackage")  # kept
    assert [w.filename for w in caught] == ["f.py"] * 3
    assert all(str(w.message) == m for w, (m, _, _) in zip(caught, cases))
    assert os.environ["PYTHONWARNINGS"].split(",") == ["default", *CHILD_WARNINGS]
    quiet_known_warnings()  # idempotent
    assert os.environ["PYTHONWARNINGS"].split(",") == ["default", *CHILD_WARNINGS]
    # a child process started with that environment drops them too
    code = "\n".join(f"import warnings; warnings.warn_explicit({m!r}, {c.__name__}, 'f.py', 1, "
                     f"module={mod!r})" for m, c, mod in cases)
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env=dict(os.environ), timeout=60)
    assert child.returncode == 0 and child.stderr == ""
