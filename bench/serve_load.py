"""Load test of ``comgen serve``: latency and throughput at 1, 4 and 16 concurrent clients.

Starts ``comgen serve RUN`` in its own process on a free localhost port, sends ``--requests`` POST /predict
requests per concurrency level (each client its own keep-alive connection, images cycled from the run's test
split, multipart uploads, JSON answers with the map PNG), and prints a markdown table: concurrency, requests,
errors, p50 and p99 latency, throughput, and the mean batch the server ran (from /health). Without ``--run`` it
first builds a small run (``comgen synth`` + ``comgen run`` on one built-in category, reused when present).

    python bench/serve_load.py [--run RUN] [--out bench_runs/serve] [--size 128] [--requests 200]
                               [--levels 1,4,16] [--max-batch 8] [--batch-wait-ms 5]
"""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests

CATEGORY = "breakfast_tray"


def comgen(*args: str) -> list[str]:
    return [sys.executable, "-m", "comgen.cli", *args]


def build_run(out: Path, size: int) -> Path:
    """A small realistic run: one built-in category at ``size`` px, the packaged EfficientNet-Lite0, 4 epochs."""
    data, run = out / "data", out / "runs" / CATEGORY
    if not (data / CATEGORY).is_dir():
        subprocess.run(comgen("synth", str(data), "--size", str(size), "--train", "40", "--validation", "12",
                              "--test", "24", "--categories", CATEGORY, "--workers", "1"), check=True)
    if not (run / "detector" / "best.safetensors").is_file():
        subprocess.run(comgen("run", str(data), "-c", CATEGORY, "--out", str(run), "--image-size", str(size),
                              "--n", "60", "--epochs", "4"), check=True)
    return run


def upload_images(run: Path) -> list[tuple[str, bytes]]:
    """(name, file bytes) of the run's test images, as a client would upload them."""
    from comgen.data.readers import open_dataset
    from comgen.rundir import RunDir

    info = RunDir(run).info
    samples = open_dataset(info.dataset).samples(info.category, "test")
    return [(Path(s.path).name, Path(s.path).read_bytes()) for s in samples]


def start_server(run: Path, max_batch: int, wait_ms: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(comgen("serve", str(run), "--port", "0", "--max-batch", str(max_batch),
                                   "--batch-wait-ms", str(wait_ms)), stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()  # type: ignore[union-attr]
    found = re.search(r"on (http://\S+) ", line)
    if not found:
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}")
    url = found.group(1)
    for _ in range(600):
        try:
            requests.get(f"{url}/health", timeout=5).raise_for_status()
            return proc, url
        except requests.ConnectionError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("server did not answer /health")


def batches(url: str) -> dict[int, int]:
    return {int(k): v for k, v in requests.get(f"{url}/health", timeout=30).json()["batch_sizes"].items()}


def level(url: str, images: list[tuple[str, bytes]], clients: int, n: int) -> dict[str, float]:
    """``n`` requests from ``clients`` concurrent clients: latencies, errors, throughput, mean batch size."""
    lock = threading.Lock()
    next_i = [0]
    lat: list[float] = []
    errors = [0]
    precision = [0.0]
    before = batches(url)

    def client() -> None:
        with requests.Session() as s:
            while True:
                with lock:
                    i = next_i[0]
                    next_i[0] += 1
                if i >= n:
                    return
                name, data = images[i % len(images)]
                t = time.perf_counter()
                try:
                    r = s.post(f"{url}/predict", files={"image": (name, data, "image/png")}, timeout=120)
                    ok = r.status_code == 200
                    body = r.json() if ok else {}
                except requests.RequestException:
                    ok, body = False, {}
                dt = time.perf_counter() - t
                with lock:
                    if ok:
                        lat.append(dt)
                        precision[0] = max(precision[0], body["map_png_max_error"])
                    else:
                        errors[0] += 1

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for f in [pool.submit(client) for _ in range(clients)]:
            f.result()
    wall = time.perf_counter() - t0
    after = batches(url)
    calls = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    n_calls = sum(calls.values())
    ms = np.asarray(lat) * 1000
    return {"clients": clients, "requests": n, "errors": errors[0],
            "p50": float(np.percentile(ms, 50)) if len(ms) else float("nan"),
            "p99": float(np.percentile(ms, 99)) if len(ms) else float("nan"),
            "throughput": len(lat) / wall, "batch": sum(k * v for k, v in calls.items()) / max(n_calls, 1),
            "precision": precision[0]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, help="run directory with a trained detector (default: build one)")
    ap.add_argument("--out", type=Path, default=Path("bench_runs/serve"), help="where the default run is built")
    ap.add_argument("--size", type=int, default=128, help="image size of the default run")
    ap.add_argument("--requests", type=int, default=200, help="requests per concurrency level")
    ap.add_argument("--levels", default="1,4,16", help="comma-separated numbers of concurrent clients")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--batch-wait-ms", type=float, default=5.0)
    args = ap.parse_args(argv)
    run = args.run or build_run(args.out, args.size)
    images = upload_images(run)
    proc, url = start_server(run, args.max_batch, args.batch_wait_ms)
    try:
        level(url, images, 2, 8)  # warm-up: first calls pay for lazy initialisation
        rows = [level(url, images, int(c), args.requests) for c in args.levels.split(",")]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    print(f"\nrun {run}, {len(images)} test images cycled, --max-batch {args.max_batch}, "
          f"--batch-wait-ms {args.batch_wait_ms:g}\n")
    print("| concurrency | requests | errors | p50 ms | p99 ms | throughput img/s | mean batch |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['clients']} | {r['requests']} | {r['errors']} | {r['p50']:.1f} | {r['p99']:.1f} | "
              f"{r['throughput']:.1f} | {r['batch']:.2f} |")
    print(f"\nlargest map PNG quantisation error (half a 16-bit step) over all answers: "
          f"{max(r['precision'] for r in rows):.2e} z")
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
