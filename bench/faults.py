"""Fault benchmark: SIGKILL at random points must resume to identical outputs, and damaged inputs must fail in one line.

Why: a run is hours of work on a real machine and gets killed (out of memory, a pre-empted node, Ctrl-C); the rerun must
end exactly where an uninterrupted run ends. Files come from elsewhere (datasets, shared run folders, hand-edited
configs); whatever is damaged must give one line naming the file, never a traceback, never a silent wrong result,
and never a write into the dataset.

    python bench/faults.py --out /tmp/faults                  # 20 kills, 500 fuzz cases
    python bench/faults.py --out /tmp/faults --kills 3 --cases 40

Kills: ``comgen run`` on a tiny built-in category is killed with SIGKILL after a seeded random delay, then rerun to
the end; its outputs (generated set, component model, detector weights and calibration, maps, scores) must be
byte-identical to those of an uninterrupted run. Fuzz: one file of a pristine dataset or run is damaged (random bytes,
truncation, emptied, replaced by a folder, made unreadable, wrong type in a YAML or JSON value), then the command that
reads it runs (in this process, through the CLI's entry point). A case is a *clean error* when the command exits 2 with one ``error:`` line, a
*traceback* when Python printed one, a *silent wrong result* when it exited 0 but wrote a non-finite score, and
*dataset modified* when any dataset file changed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

CATEGORY = "pushpin_grid"
RUN_YAML = """image_size: 64
n_anomalies: 24
mask: false
learn: {k_max: 6, pixels_per_image: 400, max_fit_pixels: 8000, select_pixels: 3000}
detector: {epochs: 2, batch_size: 8}
"""
# outputs compared between a killed-and-resumed run and an uninterrupted one (timings and logs excluded)
COMPARED = ("components", "generated", "detector/best.safetensors", "detector/calibration.json", "maps")
SKIP_SUFFIXES = (".html", ".log")


def comgen(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "COMGEN_QUIET": "1", "COMGEN_COMPILE": "0"}
    return subprocess.run([sys.executable, "-m", "comgen.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def tree_hash(root: Path, parts: tuple[str, ...] = COMPARED) -> dict[str, str]:
    out = {}
    for part in parts:
        base = root / part
        files = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file()) if base.exists() else []
        for f in files:
            if f.suffix in SKIP_SUFFIXES or f.name in ("stages.json", "history.jsonl", ".lock"):
                continue
            out[str(f.relative_to(root))] = hashlib.sha256(f.read_bytes()).hexdigest()[:16]
    return out


def make_data(out: Path) -> Path:
    data = out / "data"
    if not data.exists():
        r = comgen("synth", str(data), "--size", "64", "--train", "16", "--validation", "6", "--test", "9",
                   "--categories", CATEGORY, "--workers", "1")
        if r.returncode:
            raise SystemExit(r.stderr)
    (out / "run.yaml").write_text(RUN_YAML)
    return data


def run_cmd(data: Path, out: Path, run: Path) -> list[str]:
    return ["run", str(data), "--category", CATEGORY, "--out", str(run), "--config", str(out / "run.yaml")]


def kills(data: Path, out: Path, n: int, seed: int) -> dict:
    ref = out / "reference"
    if ref.exists():
        shutil.rmtree(ref)
    t0 = time.perf_counter()
    r = comgen(*run_cmd(data, out, ref))
    full = time.perf_counter() - t0
    if r.returncode:
        raise SystemExit(f"reference run failed: {r.stderr[-2000:]}")
    want = tree_hash(ref)
    rng = random.Random(seed)
    identical, details = 0, []
    env = {**os.environ, "COMGEN_QUIET": "1", "COMGEN_COMPILE": "0"}
    for k in range(n):
        run = out / f"kill{k}"
        if run.exists():
            shutil.rmtree(run)
        delay = rng.uniform(0.5, 0.95 * full)
        proc = subprocess.Popen([sys.executable, "-m", "comgen.cli", *run_cmd(data, out, run)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        r = comgen(*run_cmd(data, out, run))
        got = tree_hash(run) if r.returncode == 0 else {}
        same = r.returncode == 0 and got == want
        identical += same
        diff = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))[:3]
        details.append({"kill_after_s": round(delay, 1), "rerun_exit": r.returncode, "identical": same,
                        "differs": diff, "stderr": r.stderr.strip().splitlines()[-1:] if r.returncode else []})
        print(f"[faults] kill {k + 1}/{n} after {delay:.1f} s: {'identical' if same else 'DIFFERENT ' + str(diff)}",
              flush=True)
        shutil.rmtree(run, ignore_errors=True)
    return {"kills": n, "identical": identical, "uninterrupted_s": round(full, 1), "cases": details}


# --- fuzz -----------------------------------------------------------------------------------------------------

def _damage(path: Path, how: str, rng: random.Random) -> None:
    if how == "folder":
        path.unlink()
        path.mkdir()
        return
    if how == "unreadable":
        path.chmod(0)
        return
    data = path.read_bytes()
    if how == "empty":
        data = b""
    elif how == "truncate":
        data = data[: rng.randrange(max(1, len(data)))]
    elif how == "bytes":
        buf = bytearray(data or b"\0")
        for _ in range(rng.randint(1, 16)):
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        data = bytes(buf)
    elif how == "garbage":
        data = bytes(rng.randrange(256) for _ in range(rng.randint(1, 512)))
    elif how == "wrongtype":  # a JSON/YAML value of the wrong type
        text = data.decode("utf-8", "replace")
        for old, new in ((": 64", ": sixty-four"), ('"threshold": ', '"threshold": "x", "_": '), ("epochs: 2", "epochs: [2]"),
                         ('"file": "', '"file": "../../'), ("k_max: 6", "k_max: -6"), ('"score_std": ', '"score_std": 0, "_s": ')):
            if old in text:
                text = text.replace(old, new, 1)
                break
        else:
            text = text[: len(text) // 2]
        data = text.encode()
    path.write_bytes(data)


def _targets(data: Path, run: Path) -> list[tuple[str, Path, str]]:
    """(kind, file, command) candidates: the command is the one that reads the file."""
    cat = data / CATEGORY
    out = []
    for p in sorted((cat / "train" / "good").glob("*.png"))[:6] + sorted((cat / "validation" / "good").glob("*.png"))[:3]:
        out.append(("image", p, "run"))
    for p in sorted((cat / "test").rglob("*.png"))[:6]:
        out.append(("image", p, "predict"))
    for p in sorted((cat / "ground_truth").rglob("*.png"))[:4]:
        out.append(("mask", p, "evaluate"))
    out.append(("config", cat / "defects_config.json", "evaluate"))
    out.append(("config", run.parent / "run.yaml", "run"))
    gen = run / "generated" / "compositional"
    out.append(("manifest", gen / "manifest.jsonl", "train"))
    for p in sorted((gen / "images").glob("*.png"))[:3]:
        out.append(("generated", p, "train"))
    det = run / "detector"
    for name in ("best.safetensors", "calibration.json", "config.yaml"):
        out.append(("artifact", det / name, "predict"))
    for p in sorted((det / "bank").glob("*"))[:3]:
        out.append(("artifact", p, "predict"))
    for p in sorted((run / "components").glob("*"))[:3]:
        if p.is_file():
            out.append(("artifact", p, "predict"))
    return [t for t in out if t[1].is_file()]


def _call(args: list[str]) -> tuple[int, str]:
    """Run the CLI in this process (no interpreter start per case); (exit code, stderr). An exception that escapes
    ``main`` is what a user would see as a traceback."""
    import contextlib
    import io
    import traceback

    from comgen.cli import main as cli_main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli_main(args)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:  # noqa: BLE001 - exactly what this benchmark counts
            traceback.print_exc(file=err)
            code = 1
    return int(code or 0), err.getvalue()


def _classify(code: int, err: str, preds: Path) -> str:
    err = err.strip()
    if "Traceback (most recent call last)" in err:
        return "traceback"
    if code == 2 and any(line.startswith("error: ") for line in err.splitlines()):
        return "clean error"
    if code == 0:
        csv = preds / "scores.csv"
        if csv.is_file():
            text = csv.read_text().lower()
            if "nan" in text or "inf" in text:
                return "silent wrong result"
        return "ran"
    return f"exit {code}"


def _fresh_copy(out: Path, data: Path, ref: Path) -> Path:
    work = out / "fuzz"
    if work.exists():
        for p in work.rglob("*"):
            try:
                p.chmod(0o700 if p.is_dir() else 0o600)
            except OSError:
                pass
        shutil.rmtree(work)
    shutil.copytree(data, work / "data")
    shutil.copytree(ref, work / "runs" / "run")
    shutil.copy(out / "run.yaml", work / "runs" / "run.yaml")
    return work


def _command(command: str, work: Path) -> list[str]:
    run = work / "runs" / "run"
    if command == "run":
        return ["run", str(work / "data"), "--category", CATEGORY, "--out", str(run), "--config",
                str(work / "runs" / "run.yaml")]
    if command == "train":
        return ["train", str(run)]
    if command == "predict":
        return ["predict", str(run), str(work / "data" / CATEGORY / "test"), "--out", str(work / "preds")]
    return ["evaluate", str(work / "data"), "--category", CATEGORY, "--maps", str(run / "maps"), "--out",
            str(work / "eval")]


def fuzz(data: Path, out: Path, cases: int, seed: int) -> dict:
    ref = out / "reference"
    rng = random.Random(seed)
    targets = _targets(data, ref)
    hows = ("bytes", "truncate", "empty", "garbage", "wrongtype", "folder", "unreadable")
    counts: dict[str, int] = {}
    examples: dict[str, list[str]] = {}
    modified = 0
    for k in range(cases):
        work = _fresh_copy(out, data, ref)
        kind, src, command = targets[rng.randrange(len(targets))]
        if src.is_relative_to(data):
            target = work / "data" / src.relative_to(data)
        elif src.is_relative_to(ref):
            target = work / "runs" / "run" / src.relative_to(ref)
        else:  # the run config beside the reference run
            target = work / "runs" / src.name
        how = hows[rng.randrange(len(hows))]
        _damage(target, how, rng)
        before = tree_hash(work / "data", (".",))
        code, err = _call(_command(command, work))
        verdict = _classify(code, err, work / "preds")
        if tree_hash(work / "data", (".",)) != before:
            modified += 1
            verdict = "dataset modified"
        counts[verdict] = counts.get(verdict, 0) + 1
        if verdict not in ("clean error", "ran") and len(examples.setdefault(verdict, [])) < 5:
            examples[verdict].append(f"{kind} {target.name} {how} ({command}): {err.strip()[-400:]}")
        if (k + 1) % 25 == 0:
            print(f"[faults] fuzz {k + 1}/{cases}: {counts}", flush=True)
    return {"cases": cases, "verdicts": counts, "datasets_modified": modified, "examples": examples}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--cases", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    data = make_data(args.out)
    report = {"kills": kills(data, args.out, args.kills, args.seed)}
    report["fuzz"] = fuzz(data, args.out, args.cases, args.seed)
    report["seconds"] = round(time.perf_counter() - start)
    (args.out / "faults.json").write_text(json.dumps(report, indent=1))
    k, f = report["kills"], report["fuzz"]
    v = f["verdicts"]
    print("| what | count |\n|---|---|")
    print(f"| kills resumed to identical outputs | {k['identical']} / {k['kills']} |")
    print(f"| fuzz cases | {f['cases']} |")
    for name in ("clean error", "ran", "traceback", "silent wrong result", "dataset modified"):
        print(f"| {name} | {v.get(name, 0)} |")
    others = {n: c for n, c in v.items() if n not in ("clean error", "ran", "traceback", "silent wrong result",
                                                         "dataset modified")}
    if others:
        print(f"| other exits | {others} |")
    print(f"[faults] {report['seconds']} s; details in {args.out / 'faults.json'}")


if __name__ == "__main__":
    main()
