"""The domainbed experiment's job commands: ``python -m reproduction.fish.domainbed.job train ARGS``
(DomainBed's train.py through the plugin, after deleting an incomplete run folder) and ``... data``
(the MNIST the runs read)."""
from __future__ import annotations

import argparse
import json
import shutil
import struct
import sys
from pathlib import Path
from typing import Optional, Sequence

from .plan import MNIST_DIGITS, MNIST_FILES, MODULE


def delete_incomplete(output_dir: Path) -> bool:
    """DomainBed's ``sweep delete_incomplete`` for one run: remove ``output_dir`` if it exists
    without ``done``. Returns whether it did."""
    if output_dir.exists() and not (output_dir / "done").exists():
        shutil.rmtree(output_dir)
        return True
    return False


def train_main(train_args: Sequence[str]) -> None:
    """Delete the run's incomplete folder, then run DomainBed's train.py through the plugin's
    wrapper (``gradmatch.domainbed.train``) in this process with ``train_args``."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--output_dir", required=True)
    output_dir = Path(parser.parse_known_args(train_args)[0].output_dir)
    if delete_incomplete(output_dir):
        print(f"deleted the incomplete run {output_dir} (DomainBed cannot resume a run)", flush=True)
    from gradmatch.domainbed import train

    sys.argv = [sys.argv[0], *train_args]
    train.main()


def _write_prefix(source_file: Path, target: Path, n: int) -> None:
    """The first ``n`` items of an IDX file (count in the header rewritten)."""
    header, item = (16, 28 * 28) if "images" in source_file.name else (8, 1)
    data = source_file.read_bytes()
    total = struct.unpack(">I", data[4:8])[0]
    if not 0 < n <= total:
        raise ValueError(f"{source_file} has {total} digits; cannot keep {n}")
    target.write_bytes(data[:4] + struct.pack(">I", n) + data[8:header] + data[header:header + n * item])


def write_mnist(source: Path, dest: Path, n_train: Optional[int] = None,
                n_test: Optional[int] = None) -> None:
    """``dest/MNIST/raw`` from ``source/MNIST/raw``: symlinks to the files, or with ``n_train`` and
    ``n_test`` the first that many training and test digits as IDX files; then ``dest/mnist.json``."""
    keep = {"train": n_train, "t10k": n_test}
    if (n_train is None) != (n_test is None):
        raise ValueError("give both --train and --test, or neither (all digits)")
    raw = dest / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in MNIST_FILES:
        source_file, target = (source / "MNIST" / "raw" / name).resolve(), raw / name
        target.unlink(missing_ok=True)
        n = keep[name.split("-")[0]]
        if n is None:
            target.symlink_to(source_file)
        else:
            _write_prefix(source_file, target, n)
    digits = {split: MNIST_DIGITS[split] if n is None else n for split, n in keep.items()}
    (dest / "mnist.json").write_text(json.dumps(
        {"source": str(source.resolve()), "train_digits": digits["train"], "test_digits": digits["t10k"],
         "how": "symlinks" if n_train is None else "prefix copy"}, indent=2))


def main(argv: Optional[Sequence[str]] = None) -> None:
    """``python -m reproduction.fish.domainbed.job train ARGS | data ...`` (the jobs' commands)."""
    from gradmatch.quiet import quiet_third_party

    quiet_third_party()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:
        return train_main(argv[1:])
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("train", help="DomainBed's train.py arguments follow")
    data = sub.add_parser("data", help="write DEST/MNIST/raw from SOURCE/MNIST/raw (links or a prefix)")
    data.add_argument("--source", type=Path, required=True)
    data.add_argument("--dest", type=Path, required=True)
    data.add_argument("--train", type=int, help="training digits kept (default: all, as symlinks)")
    data.add_argument("--test", type=int, help="test digits kept (default: all, as symlinks)")
    args = parser.parse_args(argv)
    write_mnist(args.source, args.dest, args.train, args.test)


if __name__ == "__main__":
    main()
