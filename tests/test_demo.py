"""`gradmatch demo`: the paper's CdSprites claim at a reduced budget, files, reuse of finished runs."""
import json
import time

import pytest

from gradmatch.demo import format_table, run_demo


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
