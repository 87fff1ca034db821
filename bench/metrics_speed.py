"""Benchmark: exact image/pixel AUROC, AUPRO and AUC-sPRO on 1,000 maps of 256x256 (target < 30 s).

Two rows:
- ``in-memory``: the metric engine alone on maps held as arrays (LOCO protocol: logical, structural, mean);
- ``end-to-end``: ``evaluate_category`` on a LOCO-layout dataset and float32 TIFF maps written to a temporary
  folder (reads every map twice, validates sizes against image headers); needs ``comgen.data.readers``.

    python bench/metrics_speed.py [--n 1000] [--size 256] [--no-e2e]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("COMGEN_QUIET", "1")

import numpy as np  # noqa: E402

from comgen.evaluate.groundtruth import ground_truth_from_masks  # noqa: E402
from comgen.evaluate.metrics import image_auroc, pixel_curves  # noqa: E402
from comgen.records import DefectSpec  # noqa: E402

DEFECTS = [DefectSpec("missing", 1, 1.0, True), DefectSpec("extra", 2, 400, False),
           DefectSpec("scratch", 3, 0.5, True)]
BY_VALUE = {d.pixel_value: d for d in DEFECTS}


def _case(n: int, size: int, seed: int = 0):
    """Half good, a quarter logical, a quarter structural; anomalies have 1-2 masks of random boxes."""
    rng = np.random.default_rng(seed)
    maps, masks, groups = [], [], []
    for i in range(n):
        group = ("good", "good", "logical", "structural")[i % 4]
        amap = rng.random((size, size), dtype=np.float32)
        ms = []
        if group != "good":
            for _ in range(rng.integers(1, 3)):
                m = np.zeros((size, size), np.uint8)
                h, w = rng.integers(size // 16, size // 4, 2)
                y, x = rng.integers(0, size - max(h, w), 2)
                m[y:y + h, x:x + w] = 3 if group == "structural" else rng.integers(1, 3)
                ms.append(m)
                amap += 0.4 * rng.random() * (m > 0)
        maps.append(amap)
        masks.append(ms)
        groups.append(group)
    return maps, masks, groups


def bench_in_memory(maps, masks, groups) -> tuple[float, dict]:
    t0 = time.perf_counter()
    gts = [ground_truth_from_masks(ms, BY_VALUE) if ms else None for ms in masks]
    subsets = {"logical": {"good", "logical"}, "structural": {"good", "structural"}}
    curves = pixel_curves(maps, gts, groups, subsets)
    scores = np.array([m.max() for m in maps])
    g = np.array(groups)
    out = {}
    for name, members in subsets.items():
        sel = np.isin(g, list(members))
        c = curves[name]
        out[name] = {"image_auroc": image_auroc(scores[sel], g[sel] != "good"), "pixel_auroc": c.pixel_auroc(),
                     "aupro": c.aupro(), "spro@0.05": c.auc_spro()["0.05"]}
    return time.perf_counter() - t0, out


def bench_end_to_end(maps, masks, groups, size: int) -> tuple[float, float, dict] | None:
    try:
        from comgen.data.readers import open_dataset
    except ImportError:
        return None
    from comgen.evaluate.maps import write_map
    from comgen.evaluate.run import evaluate_category
    from comgen.io import write_png

    label = {"good": "good", "logical": "logical_anomalies", "structural": "structural_anomalies"}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ds"
        cat = root / "bench"
        t0 = time.perf_counter()
        img = np.full((size, size, 3), 128, np.uint8)
        for split in ("train", "validation"):
            write_png(cat / split / "good" / "000.png", img)
        counters: dict[str, int] = {}
        for ms, g in zip(masks, groups):
            k = counters.get(g, 0)
            counters[g] = k + 1
            write_png(cat / "test" / label[g] / f"{k:04d}.png", img)
            for j, m in enumerate(ms):
                write_png(cat / "ground_truth" / label[g] / f"{k:04d}" / f"{j:03d}.png", m)
        (cat / "defects_config.json").write_text(json.dumps(
            [{"defect_name": d.name, "pixel_value": d.pixel_value, "saturation_threshold": d.saturation_threshold,
              "relative_saturation": d.relative_saturation} for d in DEFECTS]))
        ds = open_dataset(root)
        samples = ds.samples("bench", "test")
        by_key = {}
        counters = {}
        for amap, g in zip(maps, groups):
            k = counters.get(g, 0)
            counters[g] = k + 1
            by_key[(label[g], f"{k:04d}")] = amap
        for s in samples:
            write_map(Path(tmp) / "maps", s, by_key[(s.label, s.image_id)])
        prep = time.perf_counter() - t0
        t0 = time.perf_counter()
        r = evaluate_category(ds, "bench", Path(tmp) / "maps")
        return time.perf_counter() - t0, prep, r["metrics"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--no-e2e", action="store_true")
    args = ap.parse_args()
    maps, masks, groups = _case(args.n, args.size)
    rows = []
    secs, res = bench_in_memory(maps, masks, groups)
    rows.append(("in-memory", secs, res["logical"], res["structural"]))
    if not args.no_e2e:
        e2e = bench_end_to_end(maps, masks, groups, args.size)
        if e2e is None:
            print("end-to-end row skipped: comgen.data.readers is not available", file=sys.stderr)
        else:
            secs, prep, m = e2e
            rows.append(("end-to-end", secs, m["logical"], m["structural"]))
            print(f"(end-to-end: writing the dataset and TIFF maps took {prep:.1f} s, not counted)")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\n{args.n} maps of {args.size}x{args.size} (LOCO protocol), peak RSS {rss:.0f} MiB, target < 30 s")
    print(f"{'path':<12} {'seconds':>8} {'log img':>8} {'log px':>7} {'log PRO':>8} {'log sPRO':>9} "
          f"{'str img':>8} {'str px':>7} {'str PRO':>8} {'str sPRO':>9}")
    for name, secs, lo, st in rows:
        cells = [lo["image_auroc"], lo["pixel_auroc"], lo["aupro"], lo.get("spro@0.05", lo.get("spro")),
                 st["image_auroc"], st["pixel_auroc"], st["aupro"], st.get("spro@0.05", st.get("spro"))]
        print(f"{name:<12} {secs:>8.2f} " + " ".join(f"{c:>8.4f}" for c in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
