"""The shipped speed measurements at toy size on the CPU (``benchmarks/`` calls the same
functions at full size): the cross-checks compute what they claim (FishFast == DomainBed's Fish,
deepcopy-Fish == Fish, batched == official-order ADIOS), every result is a plain JSON-able dict
with positive times, and a time cap stops a measurement early and says so. The DomainBed part
needs a checkout ($DOMAINBED_DIR or ~/.cache/gradmatch-adios/upstream/DomainBed) and is skipped
with that reason otherwise."""
from __future__ import annotations

import json
import time

import pytest

from adios_ssl import speed as adios_speed
from gradmatch import speed as fish_speed
from runkit.bench import timing
from runkit.bench.child import run_in_child


def plain_json(result: dict) -> dict:
    """``result`` through strict JSON and back (it must be plain data, NaN-free)."""
    return json.loads(json.dumps(result, allow_nan=False))


def positive_times(stats: dict, unit: str) -> None:
    for name, s in stats.items():
        assert 0 < s[f"min_{unit}"] <= s[f"q25_{unit}"] <= s[f"median_{unit}"] <= s[f"q75_{unit}"], name


# ---------------------------------------------------------------------------- runkit.bench
def test_interleaved_warms_up_alternates_the_order_and_stops_at_the_cap():
    calls = []
    run = timing.interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, reps=3, warmup=1)
    assert calls == ["a", "b"] + ["a", "b", "b", "a", "a", "b"]  # warm-up, then AB, BA, AB
    assert run["reps"] == 3 and run["capped"] is False
    assert [len(run["samples"][n]["s"]) for n in "ab"] == [3, 3]

    start = time.perf_counter()
    run = timing.interleaved({"slow": lambda: time.sleep(0.05)}, reps=1000, warmup=2,
                             deadline=timing.Deadline(0.2))
    assert time.perf_counter() - start < 2
    assert run["capped"] is True and 1 <= run["reps"] < 10
    assert all(0.04 < s < 1 for s in run["samples"]["slow"]["s"])


def test_child_process_returns_the_dict_or_the_error():
    ok = run_in_child("runkit.bench.timing:summarize", {"samples": [1.0, 2.0, 3.0], "unit": "s"}, timeout_s=120)
    assert ok["median_s"] == 2.0 and ok["n"] == 3 and ok["seconds"] > 0
    bad = run_in_child("json:loads", {"s": "not json"}, timeout_s=120)
    assert bad["error"].startswith("rc 1: json.decoder.JSONDecodeError") and bad["peak_mb"] != bad["peak_mb"]


# ---------------------------------------------------------------------------- gradmatch.speed
def test_fish_overhead_cross_check_and_result():
    assert fish_speed.check_deepcopy_matches_fish("adam") < 1e-6
    assert fish_speed.check_deepcopy_matches_fish("sgd") < 1e-6
    r = plain_json(fish_speed.measure_fish_overhead("cnn", batch=4, image_size=16, steps=4, warmup=1,
                                                    piece_samples=2, piece_ms=0.5))
    assert list(r["steps"]) == list(fish_speed.VARIANTS)
    positive_times(r["steps"], "ms")
    positive_times(r["pieces"], "ms")
    assert all(s["n"] == 4 for s in r["steps"].values()) and r["capped"] is False
    assert set(r["pieces"]) == set(fish_speed.FISH_KEYS) | {"deepcopy + new optimizer", "state_dict meta step"}
    floor, fish = r["steps"]["floor"]["median_ms"], r["steps"]["fish"]["median_ms"]
    assert r["steps"]["floor"]["ratio_vs_floor"] == 1.0
    assert r["overhead_pct"] == pytest.approx(100 * (fish / floor - 1))
    assert r["fish_bookkeeping_ms"] == pytest.approx(sum(r["pieces"][k]["median_ms"] for k in fish_speed.FISH_KEYS))
    assert [len(v) for v in r["raw_step_ms"].values()] == [4, 4, 4]


def test_fish_overhead_stops_at_its_time_cap():
    start = time.perf_counter()
    r = fish_speed.measure_fish_overhead("cnn", batch=4, image_size=16, steps=100_000, warmup=1,
                                         piece_samples=100_000, piece_ms=0.5, deepcopy=False, time_cap_s=0.5)
    assert time.perf_counter() - start < 30
    assert r["capped"] is True and r["time_cap_s"] == 0.5
    assert 1 <= r["steps"]["fish"]["n"] < 100_000 and list(r["steps"]) == ["floor", "fish"]


# ---------------------------------------------------------------------------- gradmatch.domainbed.speed
@pytest.fixture(scope="module")
def domainbed_speed():
    from gradmatch.domainbed import DomainBedNotFound, find_checkout

    try:
        find_checkout()
    except DomainBedNotFound as err:  # pragma: no cover - depends on the machine
        pytest.skip(f"no DomainBed checkout: {err}")
    from gradmatch.domainbed import speed

    return speed


def test_fishfast_matches_domainbed_fish_and_is_timed_through_update(domainbed_speed):
    speed = domainbed_speed
    assert speed.check_fishfast_matches_fish() < 1e-6  # float rounding; Adam moves weights ~1e-3 a step
    r = plain_json(speed.measure_domainbed_fish("mnist_cnn", batch=4, steps=2, warmup=1, piece_samples=1,
                                                piece_ms=0.5))
    assert list(r["stats"]) == list(speed.VARIANTS) and r["steps"] == 2 and r["capped"] is False
    positive_times(r["stats"], "ms")
    positive_times(r["pieces"], "ms")
    assert set(r["ratios"]) >= {"FishFast/Fish", "FishFast/floor", "Fish/ERM"}
    q = r["ratios"]["FishFast/Fish"]
    assert q["of_medians"] == pytest.approx(r["stats"]["FishFast"]["median_ms"] / r["stats"]["Fish"]["median_ms"])
    assert r["breakdown"]["fishfast_pieces_ms"] == pytest.approx(
        r["pieces"]["FishFast: copy-in"]["median_ms"] + r["pieces"]["FishFast: meta step"]["median_ms"])
    assert r["hparams"]["FishFast"]["fish_shuffle_domains"] is False
    assert r["memory"] == {}


def test_domainbed_measurement_stops_at_its_time_cap_and_skips_memory(domainbed_speed):
    r = domainbed_speed.measure_domainbed_fish("mnist_cnn", batch=4, steps=10_000, warmup=1, piece_samples=1,
                                               piece_ms=0.5, memory_variants=["Fish"], time_cap_s=1.0)
    assert r["capped"] is True and 1 <= r["steps"] < 10_000 and r["steps_asked"] == 10_000
    assert r["memory"]["Fish"]["error"] == "skipped: time cap"


# ---------------------------------------------------------------------------- adios_ssl.speed
TOY_ADIOS = dict(batch=4, warmup=1, piece_samples=1, mask_fbase=8)


def test_batched_adios_matches_the_official_order_and_stops_at_its_time_cap():
    """The order check runs first, whatever the cap; then one timed step per mode at least."""
    r = plain_json(adios_speed.measure_adios_step(32, 2, repeats=1000, time_cap_s=0.1, **TOY_ADIOS))
    check = r["check"]
    assert check["ok"] is True and check["encoder_step_rel_diff"] <= adios_speed.CHECK_RTOL
    assert check["masker_step_ssl_loss"]["batched"] == pytest.approx(check["masker_step_ssl_loss"]["looped"], rel=1e-4)
    assert r["capped"] is True and r["time_cap_s"] == 0.1
    assert list(r["steps"]) == list(adios_speed.MODES)
    positive_times(r["steps"], "s")
    for mode in adios_speed.MODES:
        s = r["steps"][mode]
        assert s["n"] == 1 and s["encoder_median_s"] > 0 and s["masker_median_s"] > 0
        assert s["encoder_median_s"] + s["masker_median_s"] == pytest.approx(s["median_s"], rel=0.2)
    assert r["ratios"]["speedup"] == pytest.approx(r["steps"]["looped"]["median_s"] / r["steps"]["batched"]["median_s"])
    assert r["pieces"]["redundant_s"] == pytest.approx(r["pieces"]["x1_fwd_bwd_s"] + r["pieces"]["x1_fwd_nograd_s"])


def test_adios_peak_memory_in_a_fresh_process():
    m = plain_json(adios_speed.measure_memory("batched", 32, 2, batch=4, steps=1, mask_fbase=8, threads=1))
    assert "error" not in m, m.get("error")
    assert m["mode"] == "batched" and m["peak_mb"] > 0 and m["encoder_step_saved_activations_mb"] > 0
    assert m["peak_mb"] == max(m["encoder_step_peak_mb"] + m["masker_step_peak_mb"])
