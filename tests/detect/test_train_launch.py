"""``comgen train`` under a two-process launch (``accelerate launch``, gloo on the CPU) against one process.

Why a subprocess: the processes, their process group and their exit are what is tested (a deadlock, a second
writer, a rank that exits early). Why a tolerance and not equality: each process trains on its half of every
batch and the gradients are averaged, which equals the whole-batch gradient only for the per-sample terms of the
loss (Dice averages over the images with anomalies of each half), and float sums run in another order.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import comgen
from comgen.cli import main as cli
from comgen.detect import train as train_mod
from comgen.evaluate.metrics import image_auroc
from comgen.rundir import RunDir

from .test_commands import CAT, _hand_made_generated_set, _toy_loco

readers = pytest.importorskip("comgen.data.readers")

ARGS = ["--epochs", "3", "--image-size", "64", "--weights", "random", "--batch-size", "4"]
DETECTOR_FILES = {"bank", "best.safetensors", "calibration.json", "config.yaml", "head.safetensors",
                  "global_branch", "history.jsonl", "patch_memory", "state.json", "state.safetensors"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scores(run: Path, images: Path, out: Path) -> tuple[np.ndarray, np.ndarray]:
    assert cli(["predict", str(run), str(images), "--out", str(out), "--no-overlays"]) == 0
    with open(out / "scores.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return np.array([float(r["score"]) for r in rows]), np.array([not r["name"].startswith("good") for r in rows])


def test_share_gives_every_process_a_part_of_every_batch() -> None:
    idx = np.arange(7)
    parts = [train_mod._share(idx, r, 2) for r in range(2)]
    assert sorted(np.concatenate(parts).tolist()) == list(range(7)) and [len(p) for p in parts] == [4, 3]
    assert train_mod._share(idx, 0, 1).tolist() == idx.tolist()  # one process: the whole batch, as before
    small = [train_mod._share(np.array([5]), r, 3).tolist() for r in range(3)]
    assert small == [[5], [5], [5]]  # never an empty part: no process skips a step the others make


@pytest.mark.slow
def test_two_process_training_matches_one_process(tmp_path: Path) -> None:
    data = _toy_loco(tmp_path / "data")
    one, two = RunDir.create(tmp_path / "one", data, CAT), RunDir.create(tmp_path / "two", data, CAT)
    _hand_made_generated_set(one, readers.open_dataset(data).samples(CAT, "train"), 8)
    shutil.copytree(one.generated("compositional"), two.generated("compositional"))
    assert cli(["train", str(one.root), *ARGS]) == 0

    src = str(Path(comgen.__file__).parents[1])  # the launched processes import this comgen, not another copy
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "COMGEN_QUIET": "1"}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(_free_port()), "-m", "comgen.cli", "train", str(two.root), *ARGS, "--cpu"]
    done = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "training on 2 processes (cpu)" in done.stdout  # really two processes, not a silent single one
    assert done.stdout.count("trained 3 epoch(s)") == 1  # the main process speaks for both

    det = two.detector
    assert {p.name for p in det.iterdir()} == DETECTOR_FILES  # one detector, no stray or temporary files
    assert len((det / "history.jsonl").read_text().splitlines()) == 3
    cal1 = json.loads((one.detector / "calibration.json").read_text())
    cal2 = json.loads((det / "calibration.json").read_text())
    assert cal2["val_auroc_generated"] == pytest.approx(cal1["val_auroc_generated"], abs=0.1)
    assert cal2["best_val_loss"] == pytest.approx(cal1["best_val_loss"], rel=0.1)

    test = data / CAT / "test"
    s1, y = _scores(one.root, test, tmp_path / "p1")
    s2, _ = _scores(two.root, test, tmp_path / "p2")
    # nine good/anomalous pairs: at most one may swap (the network's half-batch gradients differ, see above)
    assert image_auroc(s2, y) == pytest.approx(image_auroc(s1, y), abs=0.12)
    # scores are in units of the validation normals' spread: within 0.25 of that, plus 5% of large scores
    assert np.all(np.abs(s2 - s1) <= 0.25 + 0.05 * np.abs(s1)), (s1, s2)
