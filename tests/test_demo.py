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
