"""Scale-out check on one built-in category: two generation shards against one process, and two training processes
(``accelerate launch``, gloo on CPUs) against one; prints a table.

Generation: the merged shards must be byte-identical to the unsharded set. Training: close, not identical (each
process trains on its part of every batch and the gradients are averaged).

    python bench/scaleout.py --out /tmp/scaleout [--size 64] [--category breakfast_tray] [--n 32] [--epochs 4]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

COMGEN = [sys.executable, "-m", "comgen.cli"]


def _run(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    t = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{done.stderr[-2000:]}")
    return time.perf_counter() - t, done.stdout


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _test_scores(run: Path, test: Path, out: Path, env: dict[str, str]) -> tuple[np.ndarray, np.ndarray]:
    _run([*COMGEN, "predict", str(run), str(test), "--out", str(out), "--no-overlays"], env)
    with open(out / "scores.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return np.array([float(r["score"]) for r in rows]), np.array([not r["name"].startswith("good") for r in rows])


def generation(args: argparse.Namespace, data: Path, env: dict[str, str]) -> list[str]:
    gen = [*COMGEN, "generate", str(data), "-c", args.category, "--n", str(args.n), "--image-size", str(args.size),
           "--seed", "0"]
    one, _ = _run([*gen, "--out", str(args.out / "one")], env)
    t = time.perf_counter()
    procs = [subprocess.Popen([*gen, "--out", str(args.out / "sharded"), "--shard", f"{i}/2"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    logs = [p.communicate(timeout=1800) for p in procs]
    two = time.perf_counter() - t
    if any(p.returncode for p in procs):
        sys.exit("a shard failed:\n" + "\n".join(err[-2000:] for _, err in logs))
    merged = [m.group(1) for out, _ in logs if (m := re.search(r"\((\d+) block\(s\) regenerated", out))]
    same = _hashes(args.out / "one" / "generated" / "compositional") == \
        _hashes(args.out / "sharded" / "generated" / "compositional")
    return [f"| generate {args.n} (compositional) | {one:.1f} s | {two:.1f} s (2 shards in parallel) | "
            f"byte-identical: {'yes' if same else 'NO'}; blocks regenerated at the merge: {merged[0] if merged else '?'} |"]


def training(args: argparse.Namespace, data: Path, env: dict[str, str]) -> list[str]:
    one, two = args.out / "one", args.out / "two"
    shutil.copytree(one, two, ignore=shutil.ignore_patterns("detector", ".lock"))
    opts = ["--epochs", str(args.epochs), "--image-size", str(args.size), "--weights", args.weights]
    t1, _ = _run([*COMGEN, "train", str(one), *opts], env)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(_free_port()), "-m", "comgen.cli", "train", str(two), *opts, "--cpu"]
    t2, out = _run(launch, env)
    if "training on 2 processes" not in out:
        sys.exit("the launch did not start two processes")
    cal = [json.loads((r / "detector" / "calibration.json").read_text()) for r in (one, two)]
    test = data / args.category / "test"
    (s1, y), (s2, _) = (_test_scores(r, test, args.out / f"pred_{r.name}", env) for r in (one, two))
    from comgen.evaluate.metrics import image_auroc

    return [f"| train {args.epochs} epochs: validation loss | {cal[0]['best_val_loss']:.4f} | "
            f"{cal[1]['best_val_loss']:.4f} | |",
            f"| validation AUROC (generated) | {cal[0]['val_auroc_generated']:.3f} | "
            f"{cal[1]['val_auroc_generated']:.3f} | |",
            f"| test image AUROC | {image_auroc(s1, y):.3f} | {image_auroc(s2, y):.3f} | largest test score "
            f"difference {np.abs(s2 - s1).max():.3f} (scores span {s1.min():.2f}..{s1.max():.2f}) |",
            f"| train wall time (launch and imports included) | {t1:.1f} s | {t2:.1f} s | |"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--category", default="breakfast_tray")
    ap.add_argument("--train", type=int, default=16)
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--weights", default="auto")
    args = ap.parse_args()
    if args.out.exists():
        sys.exit(f"{args.out} exists; give a new --out")
    env = {**os.environ, "COMGEN_QUIET": "1", "OMP_NUM_THREADS": "1"}
    data = args.out / "data"
    _run([*COMGEN, "synth", str(data), "--size", str(args.size), "--train", str(args.train), "--validation", "6",
          "--test", "12", "--categories", args.category, "--workers", "1"], env)
    rows = ["| | one process | two processes | |", "|---|---|---|---|"]
    rows += generation(args, data, env)
    rows += training(args, data, env)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
