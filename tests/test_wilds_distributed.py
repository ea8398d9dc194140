"""``gradmatch train`` on several processes (Lightning Fabric, gloo on the CPU) and in mixed precision.

Multi-process runs are real ``gradmatch train --accelerator cpu --devices 2`` commands in a
subprocess: Fabric starts the second process by re-running the command, as on a GPU node.
The model is the official CdSprites CNN (no BatchNorm), so one process on the full batches and
two processes on half batches compute the same gradients up to float32 rounding. The runs use
SGD (momentum 0.9): with the preset's Adam, a gradient element at rounding level (~1e-9) is
divided by its own tiny second moment and becomes a step of +-lr, which turned 6e-8 loss
differences into 3e-5 after 20 steps when this was measured (summation order, not a bug).
"""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from test_wilds_runner import (
    TINY,
    assert_bitwise_equal,
    cli,
    final_model,
    read_log,
    snapshot,
    train_args,
    without_timing,
)

from gradmatch.backend import Backend, average_in_place
from gradmatch.distributed import eval_shards, replica_digest, shard
from gradmatch.wilds.runner import Run, RunConfig, load_checkpoint

pytestmark = pytest.mark.slow

STEPS = 24
RUN_ARGS = ["--max-steps", STEPS, "--checkpoint-every", 4, "--eval-every", 8, "--log-every", 1,
            "--meta-lr", 2.0, "--optimizer", "sgd", "--lr", 0.05, "--momentum", 0.9,
            "--accelerator", "cpu"]


def child_env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "PYTHONWARNINGS": "ignore"}


def gradmatch(args, timeout=300):
    """``python -m gradmatch.cli *args`` in a child process; returns its output (asserts exit 0)."""
    run = subprocess.run([sys.executable, "-m", "gradmatch.cli", *map(str, args)], env=child_env(),
                         capture_output=True, text=True, timeout=timeout)
    assert run.returncode == 0, f"exit {run.returncode}:\n{run.stdout[-3000:]}\n{run.stderr[-5000:]}"
    return run.stdout + run.stderr


def model_of(out):
    return final_model(out)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Fish and ERM, each on 1 process (in this process) and on 2 processes (a subprocess)."""
    made = {}

    def get(algorithm, devices):
        key = (algorithm, devices)
        if key not in made:
            out = tmp_path_factory.mktemp(f"{algorithm}-{devices}") / "run"
            args = train_args(out, *RUN_ARGS, "--devices", devices, algorithm=algorithm)
            if devices == 1:
                from gradmatch.cli import main
                assert main([str(a) for a in args]) == 0
            else:
                gradmatch(args)
            made[key] = out
        return made[key]
    return get


# ------------------------------------------------------------------------- 2 processes == 1
@pytest.mark.parametrize("algorithm", ["fish", "erm"])
def test_two_processes_train_the_same_model_as_one_process_on_the_full_batches(algorithm, runs):
    one, two = runs(algorithm, 1), runs(algorithm, 2)
    a, b = model_of(one), model_of(two)
    assert a.keys() == b.keys()
    for name in a:  # float32 rounding only: summing two half-batch gradients, in another order
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=2e-6)
    # the logged losses are those of the full batches (averaged over the processes)
    losses = [[r["loss"] for r in read_log(out) if r["kind"] == "train"] for out in (one, two)]
    assert len(losses[0]) == len(losses[1]) == STEPS
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-4)
    state = torch.load(two / "checkpoint.pt", weights_only=True)
    assert state["engine"]["world_size"] == 2 and len(state["rng"]) == 2


@pytest.mark.parametrize("algorithm", ["fish", "erm"])
def test_both_replicas_are_bitwise_identical_and_equal_the_saved_model(algorithm, runs):
    state = torch.load(runs(algorithm, 2) / "checkpoint.pt", weights_only=True)
    digests = state["engine"]["replica_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]
    from gradmatch.nets import SpriteCNN  # the digests were taken of the live models


    model = SpriteCNN(2, image_size=TINY["image_size"])
    model.load_state_dict(state["learner"]["model"])
    assert replica_digest(model) == digests[0]


def test_evaluation_covers_every_example_exactly_once(runs):
    two = runs("fish", 2)
    summary = json.loads((two / "summary.json").read_text())
    sizes = {"id_val": TINY["num_id_val"], "val": TINY["num_val"], "test": TINY["num_test"]}
    for split, size in sizes.items():
        counts = summary["metrics"][split]
        assert counts["count_color_swap:aligned"] + counts["count_color_swap:swapped"] == size
        preds = (two / "predictions" / "cdsprites").glob(f"*split:{split}_*")
        rows = [line for p in preds for line in p.read_text().splitlines() if line.strip()]
        assert len(rows) == size
    # the 2-process evaluation of the final model predicts what one process predicts from it
    one = runs("fish", 1)
    for split in sizes:
        files = [sorted((o / "predictions" / "cdsprites").glob(f"*split:{split}_*"))[0].read_text()
                 for o in (one, two)]
        agree = np.mean([x == y for x, y in zip(*(f.split() for f in files))])
        assert agree >= 0.95, (split, agree)


def test_only_process_zero_writes(runs):
    two = runs("erm", 2)
    assert sorted(p.name for p in two.iterdir()) == [
        "best_model.pt", "checkpoint.prev.pt", "checkpoint.pt", "config.json", "log.jsonl", "predictions",
        "summary.json"]
    assert sorted(p.name for p in (two / "predictions" / "cdsprites").iterdir() if "manifest" in p.name) == [
        "cdsprites_seed:0_manifest.json"]
    config = json.loads((two / "config.json").read_text())
    assert config["devices"] == 2 and config["provenance"]["engine"]["world_size"] == 2
    steps = [r["step"] for r in read_log(two) if r["kind"] == "train"]
    assert steps == list(range(1, STEPS + 1)), "each record once, from one process"


# ------------------------------------------------------------------------- resume
def test_hard_kill_and_resume_on_two_processes_is_bitwise_exact(runs, tmp_path):
    reference = runs("fish", 2)
    out = tmp_path / "run"
    args = train_args(out, *RUN_ARGS, "--devices", 2, "--checkpoint-every", 2, "--max-steps", STEPS)
    log = open(tmp_path / "output.txt", "w")
    proc = subprocess.Popen([sys.executable, "-m", "gradmatch.cli", *map(str, args)],
                            env=child_env(), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + 240
    while True:  # kill both processes at once, mid-run, once a checkpoint exists
        if (out / "checkpoint.pt").exists() and load_checkpoint(out / "checkpoint.pt")["step"] >= 6:
            break
        assert proc.poll() is None, (tmp_path / "output.txt").read_text()
        assert time.monotonic() < deadline, "no checkpoint"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert not (out / "summary.json").exists(), "the run finished before it was killed"
    killed_at = load_checkpoint(out / "checkpoint.pt")["step"]
    assert 0 < killed_at < STEPS

    gradmatch([*args, "--resume"])
    assert_bitwise_equal(model_of(out), model_of(reference))
    assert without_timing(read_log(out)) == without_timing(read_log(reference))
    assert (out / "summary.json").read_text() == (reference / "summary.json").read_text()
    assert snapshot(out / "predictions") == snapshot(reference / "predictions")


def test_a_two_process_checkpoint_resumes_on_one_process(runs, tmp_path, capsys):
    """A checkpoint carries every process's RNG state; on one process the run continues
    (same batches, now unsplit) and says that it differs from an uninterrupted run."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(runs("erm", 2), out)
    (out / "summary.json").unlink()
    code, stdout, err = cli(capsys, *train_args(out, *RUN_ARGS, "--max-steps", STEPS + 4,
                                                algorithm="erm"), "--resume")
    assert code == 0, err
    assert "written by 2 process(es), this run has 1" in stdout + err
    steps = [r["step"] for r in read_log(out) if r["kind"] == "train"]
    assert steps == list(range(1, STEPS + 5))


def test_checkpoints_load_onto_the_cpu_whatever_device_the_run_uses(runs, tmp_path):
    """The CUDA resume bug: loading with ``map_location=<run device>`` moved the CPU RNG states
    to that device and ``torch.set_rng_state`` raised. Here the run claims the ``meta`` device:
    the checkpoint must still load to the CPU and its RNG state apply."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(runs("fish", 1), out)
    (out / "summary.json").unlink()
    state = load_checkpoint(out / "checkpoint.pt")
    tensors = [state["rng"][0]["torch"], state["learner"]["model"]["0.weight"]]
    assert all(t.device.type == "cpu" for t in tensors)

    run = Run(RunConfig(dataset="cdsprites", out_dir=str(out), batch_size=8, progress=False,
                        accelerator="cpu", max_steps=STEPS, meta_lr=2.0, optimizer="sgd", lr=0.05,
                        momentum=0.9, dataset_kwargs=dict(TINY)),
              resume=True)
    run.device = torch.device("meta")
    torch.manual_seed(12345)
    restored = run._restore()
    assert torch.equal(torch.get_rng_state(), state["rng"][0]["torch"])
    assert restored["step"] == STEPS
    assert_bitwise_equal(run.model.state_dict(), state["learner"]["model"])


# ------------------------------------------------------------------------- mixed precision
def test_bf16_mixed_trains_close_to_float32(runs, tmp_path, capsys):
    out = tmp_path / "bf16"
    code, _, err = cli(capsys, *train_args(out, *RUN_ARGS, "--precision", "bf16-mixed"))
    assert code == 0, err
    bf16 = [r["loss"] for r in read_log(out) if r["kind"] == "train"]
    fp32 = [r["loss"] for r in read_log(runs("fish", 1)) if r["kind"] == "train"]
    assert all(np.isfinite(bf16))
    # the first steps (weights still close) agree to bf16's ~3 significant digits
    np.testing.assert_allclose(bf16[:3], fp32[:3], rtol=2e-2)
    assert load_checkpoint(out / "checkpoint.pt")["engine"]["precision"] == "bf16-mixed"


def test_bf16_mixed_on_two_processes_keeps_identical_replicas(tmp_path):
    out = tmp_path / "run"
    gradmatch(train_args(out, *RUN_ARGS, "--devices", 2, "--precision", "bf16", "--max-steps", 8))
    digests = load_checkpoint(out / "checkpoint.pt")["engine"]["replica_digests"]
    assert digests[0] == digests[1]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 autocast + GradScaler needs CUDA")
def test_fp16_mixed_with_gradient_scaling_on_cuda(runs, tmp_path, capsys):
    out = tmp_path / "fp16"
    code, _, err = cli(capsys, *train_args(out, *RUN_ARGS, "--accelerator", "gpu",
                                           "--precision", "16-mixed"))
    assert code == 0, err
    fp16 = [r["loss"] for r in read_log(out) if r["kind"] == "train"]
    fp32 = [r["loss"] for r in read_log(runs("fish", 1)) if r["kind"] == "train"]
    assert all(np.isfinite(fp16))
    np.testing.assert_allclose(fp16[:3], fp32[:3], rtol=2e-2)
    assert "scaler" in load_checkpoint(out / "checkpoint.pt")["engine"]


# ------------------------------------------------------------------------- guards and helpers
@pytest.mark.parametrize("extra, message", [
    (["--devices", 3], "cannot be split evenly over 3 processes"),
    (["--precision", "16-mixed"], "needs a CUDA device"),
    (["--precision", "64-true"], "not supported"),
    (["--strategy", "fsdp"], "not supported by gradmatch train"),
    (["--sync-batchnorm"], "needs CUDA"),
])
def test_bad_engine_settings_get_one_clear_error(extra, message, tmp_path, capsys):
    """Refused before any process is started (so the message appears once)."""
    code, _, err = cli(capsys, *train_args(tmp_path / "run", *RUN_ARGS, *extra))
    assert code == 2 and message in err and err.count("error:") == 1, err
    assert not (tmp_path / "run").exists()


def test_shards_are_equal_contiguous_and_cover_each_batch():
    batch = np.arange(10, 22)
    parts = [shard(batch, r, 3) for r in range(3)]
    assert [len(p) for p in parts] == [4, 4, 4]
    assert np.array_equal(np.concatenate(parts), batch)
    with pytest.raises(ValueError, match="divisible by 5"):
        shard(batch, 0, 5)
    chunks = eval_shards(11, 3)
    assert np.array_equal(np.concatenate(chunks), np.arange(11))


def test_average_in_place_gives_the_mean_with_one_collective_per_dtype():
    """Two processes simulated by a sum that adds the other process's values (the first ones
    plus 2): each tensor must become its mean, the float64 one included, and the float32 and
    float64 tensors go in separate collectives."""
    a, c = torch.randn(2, 3), torch.randn(5)
    d = torch.randn(4, dtype=torch.float64)
    before = [a.clone(), c.clone(), d.clone()]
    calls = []

    def all_reduce_sum(flat):
        calls.append(flat.dtype)
        return flat + (flat + 2)  # this process's values + the other's
    average_in_place([a, c, d], all_reduce_sum, world_size=2)
    for after, old in zip((a, c, d), before):
        assert after.dtype == old.dtype and torch.allclose(after, old + 1)
    assert sorted(map(str, calls)) == ["torch.float32", "torch.float64"]
    assert Backend().world_size == 1


# ------------------------------------------------------------------------- fp16 gradient scaling
def _fish_pair(init_scale):
    """The same Fish twice: float32 (the default backend) and 16-mixed on a CPU Fabric (torch's
    CPU autocast runs convolutions in float16, so overflow and scaling are real here)."""
    import copy
    import functools

    from lightning.fabric import Fabric

    from gradmatch.distributed import FabricBackend
    from gradmatch.fish import Fish
    from gradmatch.nets import SpriteCNN

    torch.manual_seed(0)
    model = SpriteCNN(2, image_size=16)
    batches = [(torch.randn(8, 3, 16, 16), torch.randint(0, 2, (8,))) for _ in range(3)]
    sgd = functools.partial(torch.optim.SGD, lr=0.1)
    backend = FabricBackend(Fabric(accelerator="cpu", devices=1), "16-mixed")
    backend.scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    fp16 = Fish(model, sgd, 0.5, shuffle_domains=False, backend=backend)
    fp32 = Fish(copy.deepcopy(model), sgd, 0.5, shuffle_domains=False)
    return fp16, fp32, backend.scaler, batches


def test_fp16_inner_steps_that_overflow_are_skipped_and_the_scale_backs_off():
    fp16, _, scaler, batches = _fish_pair(init_scale=2.0 ** 40)
    before = {k: v.clone() for k, v in fp16.model.state_dict().items()}
    stats = fp16.step(batches)
    assert np.isfinite(stats["loss"])
    assert_bitwise_equal(fp16.model.state_dict(), before)  # all 3 inner steps skipped
    assert scaler.get_scale() == 2.0 ** 40 / 2 ** 3      # halved once per skipped inner step


def test_fp16_with_gradient_scaling_follows_float32():
    fp16, fp32, scaler, batches = _fish_pair(init_scale=2.0 ** 8)
    for _ in range(5):
        l16, l32 = fp16.step(batches)["loss"], fp32.step(batches)["loss"]
        assert abs(l16 - l32) < 5e-3 * abs(l32)
    assert scaler.get_scale() >= 2.0 ** 8  # nothing overflowed
    for name, value in fp32.model.state_dict().items():
        torch.testing.assert_close(fp16.model.state_dict()[name], value, rtol=0, atol=5e-3)
