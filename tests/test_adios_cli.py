"""The `adios-ssl` command and how the plugin finds solo-learn (no checkout needed)."""
from __future__ import annotations

import pytest

from adios_ssl.cli import main
from adios_ssl.sololearn import locate


def test_where_without_a_checkout_says_how_to_get_one(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SOLO_LEARN_DIR", str(tmp_path / "missing"))
    assert main(["solo", "where"]) == 2
    err = capsys.readouterr().err
    assert "no solo-learn checkout at $SOLO_LEARN_DIR=" in err
    assert "adios-ssl solo clone" in err and locate.PINNED_COMMIT[:7] in err
    assert "pip install -e '.[solo]'" in err


def test_where_prints_the_configured_checkout(tmp_path, monkeypatch, capsys):
    (tmp_path / "solo" / "methods").mkdir(parents=True)
    (tmp_path / "solo" / "methods" / "base.py").write_text("")
    monkeypatch.setenv("SOLO_LEARN_DIR", str(tmp_path))
    assert main(["solo", "where"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path.resolve())


def test_default_folder_is_the_shared_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("SOLO_LEARN_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert locate.SOLO_LEARN.default_dir() == tmp_path / "gradmatch-adios" / "upstream" / "solo-learn"
    with pytest.raises(locate.SoloLearnNotFound, match=r"\(\$SOLO_LEARN_DIR is not set\)"):
        locate.find_checkout()


def test_a_checkout_in_the_older_cache_folder_is_still_found(monkeypatch, tmp_path):
    monkeypatch.delenv("SOLO_LEARN_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    legacy = tmp_path / "gradmatch" / "upstream" / "solo-learn"
    (legacy / "solo" / "methods").mkdir(parents=True)
    (legacy / "solo" / "methods" / "base.py").write_text("")
    assert locate.SOLO_LEARN.legacy_dir() == legacy
    assert locate.find_checkout() == legacy.resolve()
    new = locate.SOLO_LEARN.default_dir()  # the new folder wins when both hold a checkout
    (new / "solo" / "methods").mkdir(parents=True)
    (new / "solo" / "methods" / "base.py").write_text("")
    assert locate.find_checkout() == new.resolve()


def test_clone_failure_is_reported_and_cleaned_up(tmp_path):
    dest = tmp_path / "solo-learn"
    with pytest.raises(locate.SoloLearnNotFound, match="needs git and network access"):
        locate.SOLO_LEARN.clone(dest, repo_url=str(tmp_path / "no-such-repo"))
    assert not dest.exists()


def test_clone_refuses_a_non_empty_destination(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("mine")
    assert main(["solo", "clone", "--dest", str(tmp_path)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_unknown_script_is_refused():
    from adios_ssl.sololearn.scripts import run

    with pytest.raises(ValueError, match="unknown solo-learn script 'train'"):
        run("train", [])
