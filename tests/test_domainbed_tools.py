"""DomainBed plugin tools: the submitit launcher, the startup hook, cloning and the CLI."""
import os
import subprocess
import sys

import pytest

from gradmatch.cli import main
from gradmatch.domainbed import DomainBedNotFound, clone, find_checkout, hook
from gradmatch.domainbed.launchers import executor_from_env, submitit_launcher


@pytest.fixture
def checkout():
    try:
        return find_checkout()
    except DomainBedNotFound as err:
        pytest.skip(f"needs a DomainBed checkout (gradmatch domainbed clone): {err}")


@pytest.fixture
def local_submitit(tmp_path, monkeypatch):
    """submitit's LocalExecutor, CPU-only, logging under tmp_path/logs."""
    monkeypatch.setenv("GRADMATCH_SUBMITIT_EXECUTOR", "local")
    monkeypatch.setenv("GRADMATCH_SUBMITIT_FOLDER", str(tmp_path / "logs"))
    monkeypatch.setenv("GRADMATCH_SUBMITIT_GPUS", "0")
    monkeypatch.setenv("GRADMATCH_SUBMITIT_CPUS", "1")
    return tmp_path


def test_submitit_launcher_runs_every_command(local_submitit):
    out = local_submitit
    commands = [f"echo one > {out / 'a.txt'}", f"echo two > {out / 'b.txt'}"]
    results = submitit_launcher(commands)
    assert [r.args for r in results] == commands and all(r.returncode == 0 for r in results)
    assert (out / "a.txt").read_text() == "one\n" and (out / "b.txt").read_text() == "two\n"
    assert any((out / "logs").glob("*_log.err"))


def test_submitit_launcher_waits_for_all_and_names_failures(local_submitit):
    out = local_submitit
    with pytest.raises(RuntimeError) as err:
        submitit_launcher(["sleep 1; exit 3", f"echo ok > {out / 'ok.txt'}"])
    message = str(err.value)
    assert "1 of 2 submitit jobs failed" in message and "exit status 3: sleep 1; exit 3" in message
    assert str(out / "logs") in message and "delete_incomplete" in message
    assert (out / "ok.txt").read_text() == "ok\n"


def test_submitit_options_from_environment(tmp_path, monkeypatch):
    """Slurm parameters from GRADMATCH_SUBMITIT_*, checked without a cluster (a stub srun)."""
    (tmp_path / "srun").write_text("#!/bin/sh\nexit 1\n")
    (tmp_path / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    for name, value in {"EXECUTOR": "slurm", "FOLDER": str(tmp_path / "logs"), "PARTITION": "gpu",
                        "TIMEOUT_MIN": "90", "GPUS": "2", "CPUS": "10", "MEM_GB": "32"}.items():
        monkeypatch.setenv(f"GRADMATCH_SUBMITIT_{name}", value)
    executor = executor_from_env()
    assert executor.cluster == "slurm"
    params = executor._executor.parameters
    assert (params["partition"], params["time"], params["gpus_per_node"], params["cpus_per_task"],
            params["mem"]) == ("gpu", 90, 2, 10, "32GB")

    monkeypatch.setenv("GRADMATCH_SUBMITIT_EXECUTOR", "pbs")
    with pytest.raises(ValueError, match="EXECUTOR must be one of"):
        executor_from_env()
    monkeypatch.setenv("GRADMATCH_SUBMITIT_EXECUTOR", "local")
    monkeypatch.setenv("GRADMATCH_SUBMITIT_GPUS", "two")
    with pytest.raises(ValueError, match=r"\$GRADMATCH_SUBMITIT_GPUS must be int, got 'two'"):
        executor_from_env()


def test_register_adds_submitit_and_the_sweep_wrapper_wraps_it(checkout, local_submitit, monkeypatch):
    from gradmatch.domainbed import ensure_importable, launchers
    from gradmatch.domainbed.register import register
    from gradmatch.domainbed.sweep import plugin_command, wrap_launchers

    ensure_importable()
    from domainbed import command_launchers

    upstream = {k: v for k, v in command_launchers.REGISTRY.items() if k != "submitit"}
    monkeypatch.setattr(command_launchers, "REGISTRY", upstream)  # restored after the test
    register()
    assert command_launchers.REGISTRY["submitit"] is launchers.submitit_launcher
    wrap_launchers()
    wrapped = command_launchers.REGISTRY["submitit"]
    assert wrapped.gradmatch_wrapped and wrapped is not launchers.submitit_launcher
    # the wrapped entry still submits through submitit (a non-DomainBed command passes unchanged) ...
    target = local_submitit / "via_registry.txt"
    assert [r.args for r in wrapped([f"echo hi > {target}"])] == [f"echo hi > {target}"]
    assert target.read_text() == "hi\n"
    # ... and a sweep job's command is rewritten to the plugin's train wrapper
    job = "python -m domainbed.scripts.train --algorithm FishFast --dataset Debug28"
    rewritten = f"{sys.executable} -m gradmatch.domainbed.train --algorithm FishFast --dataset Debug28"
    assert plugin_command(job) == rewritten


def test_install_and_remove_hook(tmp_path):
    path = hook.install_hook(tmp_path)
    assert path == tmp_path / "zz_gradmatch_domainbed.pth"
    assert path.read_text().count("\n") == 1 and path.read_text().startswith("import ")
    assert hook.remove_hook(tmp_path) == path and not path.exists()
    assert hook.remove_hook(tmp_path) is None


def test_hook_messages_tell_where_it_acts_and_how_to_undo_it(tmp_path, monkeypatch):
    """A --site-dir that is not one of this interpreter's site-packages: the message says the hook
    does nothing here, and the undo command carries the same --site-dir. The environment's own
    site-packages (not written to here): every interpreter of the environment runs it."""
    path = hook.install_hook(tmp_path)
    text = hook.describe_install(path, tmp_path)
    assert f"{tmp_path} is not a site-packages folder of this interpreter" in text
    assert f"`gradmatch domainbed remove-hook --site-dir {tmp_path}`" in text
    assert "this environment" not in text
    site_packages = hook.site_dirs()[0]
    text = hook.describe_install(site_packages / hook.PTH_NAME)
    assert f"every interpreter of this environment ({sys.prefix})" in text
    assert text.endswith("undo with `gradmatch domainbed remove-hook`")

    assert hook.describe_remove(hook.remove_hook(tmp_path), tmp_path).startswith(f"removed {path}: ")
    # nothing here, but a hook in one of this interpreter's site-packages: named, with its command
    other = tmp_path / "site"
    other.mkdir()
    hook.install_hook(other)
    monkeypatch.setattr(hook, "site_dirs", lambda: [other.resolve()])
    text = hook.describe_remove(hook.remove_hook(tmp_path), tmp_path)
    assert text.startswith(f"no startup hook was installed in {tmp_path}")
    assert f"remove it with `gradmatch domainbed remove-hook --site-dir {other.resolve()}`" in text


def test_hook_refuses_a_site_dir_that_is_not_a_folder(tmp_path):
    (tmp_path / "a_file").write_text("")
    for bad, message in ((tmp_path / "nowhere", "does not exist"), (tmp_path / "a_file", "is a file")):
        for action in (hook.install_hook, hook.remove_hook):
            with pytest.raises(ValueError, match=f"--site-dir {bad} {message}"):
                action(bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_hook_keeps_interpreter_start_light(tmp_path):
    hook.install_hook(tmp_path)
    code = (f"import sys, time, site; t = time.perf_counter(); site.addsitedir({str(tmp_path)!r}); "
            "print(time.perf_counter() - t, type(sys.meta_path[0]).__name__)")
    run = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True,
                         check=True)
    seconds, first_finder = run.stdout.split()
    assert first_finder == "_Finder"
    imported = {line.split("|")[-1].strip() for line in run.stderr.splitlines() if "|" in line}
    assert not {"torch", "numpy", "gradmatch", "domainbed"} & imported, imported
    assert float(seconds) < 0.1  # ~5 ms (importlib.util) on a quiet machine


def test_hook_registers_the_plugin_in_a_plain_interpreter(checkout, tmp_path):
    (tmp_path / "site").mkdir()
    hook.install_hook(tmp_path / "site")
    env = dict(os.environ, PYTHONPATH=str(checkout), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    lookup = "from domainbed import algorithms; print(algorithms.get_algorithm_class('FishFast'))"
    runs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
            for code in (f"import site; site.addsitedir({str(tmp_path / 'site')!r}); {lookup}", lookup)]
    (hooked_out, hooked_err), (plain_out, plain_err) = [run.communicate(timeout=120) for run in runs]
    assert runs[0].returncode == 0, hooked_err
    assert hooked_out.strip() == "<class 'gradmatch.domainbed.algorithms.FishFast'>"
    assert runs[1].returncode != 0 and "NotImplementedError: Algorithm not found: FishFast" in plain_err


def test_clone_failure_says_how_to_get_domainbed_offline(tmp_path, monkeypatch):
    monkeypatch.setattr(clone, "REPO_URL", str(tmp_path / "no-such-repo"))
    dest = tmp_path / "DomainBed"
    with pytest.raises(DomainBedNotFound, match="needs git and network access") as err:
        clone.clone_domainbed(dest)
    assert "$DOMAINBED_DIR" in str(err.value) and "does not exist" in str(err.value)
    assert not dest.exists()


def test_clone_refuses_a_non_empty_destination(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        clone.clone_domainbed(tmp_path)
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_clone_checks_out_the_pinned_commit(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(clone.subprocess, "run", lambda command, **kwargs: calls.append(command))
    assert clone.clone_domainbed(tmp_path / "db") == (tmp_path / "db").resolve()
    assert calls == [["git", "clone", "--quiet", clone.REPO_URL, str(tmp_path / "db")],
                     ["git", "-C", str(tmp_path / "db"), "checkout", "--quiet", clone.PINNED_COMMIT]]


def test_cli_where(checkout, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DOMAINBED_DIR", str(checkout))
    assert main(["domainbed", "where"]) == 0
    assert capsys.readouterr().out.strip() == str(checkout)
    monkeypatch.setenv("DOMAINBED_DIR", str(tmp_path))
    assert main(["domainbed", "where"]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"gradmatch: error: no DomainBed checkout at $DOMAINBED_DIR={tmp_path}")


def test_cli_hook_and_clone(tmp_path, monkeypatch, capsys):
    assert main(["domainbed", "install-hook", "--site-dir", str(tmp_path)]) == 0
    assert (tmp_path / hook.PTH_NAME).exists() and "remove-hook" in capsys.readouterr().out
    assert main(["domainbed", "remove-hook", "--site-dir", str(tmp_path)]) == 0
    assert not (tmp_path / hook.PTH_NAME).exists() and "removed" in capsys.readouterr().out
    assert main(["domainbed", "remove-hook", "--site-dir", str(tmp_path)]) == 0
    assert "no startup hook" in capsys.readouterr().out

    monkeypatch.setattr(clone, "REPO_URL", str(tmp_path / "no-such-repo"))
    assert main(["domainbed", "clone", "--dest", str(tmp_path / "db")]) == 2
    assert "gradmatch: error: could not clone DomainBed" in capsys.readouterr().err
    (tmp_path / "keep.txt").write_text("mine")
    assert main(["domainbed", "clone", "--dest", str(tmp_path)]) == 2
    assert "not empty" in capsys.readouterr().err


def test_quiet_third_party_filters_only_the_known_warnings(monkeypatch):
    import warnings

    from gradmatch.quiet import CHILD_WARNINGS, quiet_third_party

    text = "pkg_resources is deprecated as an API. See https://setuptools.pypa.io/"
    environ = {"PYTHONWARNINGS": "default::DeprecationWarning"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_third_party(environ)
        quiet_third_party(environ)  # idempotent
        for module in ("torchmetrics.utilities.imports", "outdated", "mine"):
            warnings.warn_explicit(text, UserWarning, "x.py", 1, module=module)
        warnings.warn_explicit("Importing from timm.models.layers is deprecated, please import via "
                               "timm.layers", FutureWarning, "x.py", 1, module="timm.models.layers")
        warnings.warn_explicit("resource_tracker: There appear to be 3 leaked semaphore objects to clean up "
                               "at shutdown", UserWarning, "x.py", 1,
                               module="joblib.externals.loky.backend.resource_tracker")
        warnings.warn_explicit("something else", FutureWarning, "x.py", 1, module="timm.layers")
    assert [(str(w.message)[:14], w.category) for w in caught] == [
        (text[:14], UserWarning), ("something else", FutureWarning)]
    assert environ["PYTHONWARNINGS"].split(",") == ["default::DeprecationWarning", *CHILD_WARNINGS]
    # the child filters are valid -W options that silence the same warnings in a child process
    code = ("import warnings; "
            f"warnings.warn_explicit({text!r}, UserWarning, 'x.py', 1, module='outdated'); "
            f"warnings.warn_explicit({text!r}, UserWarning, 'x.py', 1, module='torchmetrics.utilities.imports'); "
            f"warnings.warn_explicit({text!r}, UserWarning, 'x.py', 1, module='mine')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONWARNINGS": environ["PYTHONWARNINGS"]})
    assert "Invalid -W option" not in proc.stderr
    assert proc.stderr.count("pkg_resources is deprecated") == 1 and "x.py:1" in proc.stderr
