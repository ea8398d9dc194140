"""`gradmatch demo`: the paper's CdSprites claim at a reduced budget, files, reuse of finished runs."""
import json
import re
import time

import pytest

from gradmatch.demo import check_args, format_table, run_demo


@pytest.mark.slow
def test_fish_learns_shape_where_erm_reads_colour(tmp_path):
    """N = 15, one seed (0), the demo's defaults, equal budgets (the README's demo runs three): ERM falls towards chance
    on the colour-shuffled test split while Fish learns shape."""
    summary = run_demo(tmp_path, seeds=1, jobs=2, progress=False)
    assert summary["erm"]["test_acc"] < 0.65
    assert summary["erm"]["test_acc_colour_swapped"] < 0.4  # ERM follows the colour
    assert summary["fish"]["test_acc"] > 0.8
    assert summary["fish_minus_erm_points"] >= 20
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["fish"]["test_acc"] == summary["fish"]["test_acc"]


def test_demo_files_reuse_and_settings_guard(tmp_path):
    kwargs = dict(seeds=1, steps=6, num_domains=3, batch_size=4, progress=False)
    first = run_demo(tmp_path, **kwargs)
    for key in ("erm", "fish"):
        assert 0 <= first[key]["test_acc"] <= 1
        assert (tmp_path / f"{key}_seed0" / "summary.json").exists()
    assert first["settings"]["erm_steps"] == 18 and first["settings"]["fish_steps"] == 6
    assert "Fish - ERM" in format_table(first)
    stamp = (tmp_path / "fish_seed0" / "summary.json").stat().st_mtime
    t0 = time.perf_counter()
    again = run_demo(tmp_path, **kwargs)  # finished runs are reused, not retrained
    assert time.perf_counter() - t0 < 20
    assert (tmp_path / "fish_seed0" / "summary.json").stat().st_mtime == stamp
    assert again["fish"]["test_acc"] == first["fish"]["test_acc"]
    with pytest.raises(ValueError, match="other settings"):
        run_demo(tmp_path, **{**kwargs, "steps": 12})


def test_a_diverged_run_is_reported_and_the_others_are_summarised(tmp_path):
    """Fish at an absurd inner step diverges (non-finite loss); ERM of the same seeds still
    trains, the summary counts the failure, and a rerun reuses the recorded failure."""
    kwargs = dict(seeds=2, steps=6, num_domains=3, batch_size=4, inner_lr=1e6, progress=False)
    summary = run_demo(tmp_path, jobs=2, **kwargs)
    assert summary["fish"]["finished"] == 0 and summary["fish"]["test_acc"] is None
    assert [f["seed"] for f in summary["fish"]["failed"]] == [0, 1]
    assert all("non-finite" in f["error"] for f in summary["fish"]["failed"])
    assert summary["erm"]["finished"] == 2 and 0 <= summary["erm"]["test_acc"] <= 1
    assert summary["fish_minus_erm_points"] is None
    table = format_table(summary)
    assert "FAILED: fish seed 0" in table and "0/2" in table and "2/2" in table
    assert json.loads((tmp_path / "summary.json").read_text())["fish"]["failed"] == summary["fish"]["failed"]
    assert (tmp_path / "demo.png").exists()
    stamp = (tmp_path / "fish_seed0" / "failed.json").stat().st_mtime
    assert run_demo(tmp_path, jobs=1, **kwargs)["fish"]["failed"] == summary["fish"]["failed"]
    assert (tmp_path / "fish_seed0" / "failed.json").stat().st_mtime == stamp  # not retrained


VALID = dict(seeds=1, steps=6, num_domains=3, batch_size=4)


@pytest.mark.parametrize("change,message", [
    ({"seeds": 0}, "--seeds must be an integer >= 1, got 0"),
    ({"steps": -5}, "--steps must be an integer >= 1, got -5"),
    ({"num_domains": 1}, "--num-domains must be an integer >= 2, got 1"),
    ({"batch_size": 0}, "--batch-size must be an integer >= 1, got 0"),
    ({"recipe": "rmsprop"}, "--recipe 'rmsprop' is not a demo recipe; choose one of sgd-small, sgd, adam"),
    ({"meta_lr": float("nan")}, "--meta-lr must be a positive finite number, got nan"),
    ({"inner_lr": float("inf")}, "--inner-lr must be a positive finite number, got inf"),
    ({"inner_lr": -0.1}, "--inner-lr must be a positive finite number, got -0.1"),
    ({"jobs": 0}, "--jobs must be an integer >= 1, got 0"),
    ({"threads": 0}, "--threads must be an integer >= 1, got 0"),
    ({"out": "{w}/a_file"}, "--out {w}/a_file is a file, not a folder"),
    ({"out": "{w}/a_file/demo"}, "{w}/a_file is a file, so no folder can be made under it"),
    ({"out": "{w}/foreign"}, "--out {w}/foreign is not empty and holds no demo (demo_config.json)"),
    ({"out": "{w}/old", "steps": 12}, "--out {w}/old holds a demo with other settings (fish_steps: 6 there, 12 now"),
])
def test_check_args_names_the_one_wrong_value_and_writes_nothing(tmp_path, change, message):
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "demo_config.json").write_text(json.dumps(check_args(tmp_path / "new", **VALID)))
    before = sorted(tmp_path.rglob("*"))
    args = {"out": str(tmp_path / "demo"), **VALID, **change}
    args["out"] = args["out"].replace("{w}", str(tmp_path))
    with pytest.raises(ValueError) as err:
        check_args(**args)
    assert message.replace("{w}", str(tmp_path)) in str(err.value) and "\n" not in str(err.value)
    assert sorted(tmp_path.rglob("*")) == before
    if "out" not in change and "threads" not in change:  # run_demo checks the same before it writes
        with pytest.raises(ValueError, match=re.escape(message.split(",")[0])):
            run_demo(args.pop("out"), progress=False, **{k: v for k, v in args.items() if k != "threads"})
        assert sorted(tmp_path.rglob("*")) == before
