"""RNA speed and memory: global retrieval at a 10,000-image bank (flat and compressed faiss indexes), the full
per-query RNA step (backbone + retrieval + window alignment) on a small real bank, and bank memory per 1,000 images.

Retrieval at scale uses synthetic unit-norm descriptors of the real descriptor size (the speed of a faiss search
does not depend on what the vectors mean); memory per image is measured on a real bank at the working size.

    python bench/rna_speed.py [--n 10000] [--size 256] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def _ms_per_query(index, q: np.ndarray, k: int, batch: int, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        for s in range(0, len(q), batch):
            index.search(q[s:s + batch], k)
        best = min(best, (time.perf_counter() - t) * 1000 / len(q))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10_000, help="bank size for the retrieval timing")
    ap.add_argument("--size", type=int, default=256, help="working resolution for the real-bank part")
    ap.add_argument("--real", type=int, default=24, help="images in the small real bank")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--k", type=int, default=3)
    args = ap.parse_args()
    os.environ.setdefault("COMGEN_QUIET", "1")
    import faiss
    import torch

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    from comgen.features.backbone import BackboneConfig, build_backbone
    from comgen.features.memory import MemoryBank, MemoryBankConfig, build_index

    backbone = build_backbone(BackboneConfig())
    cfg = MemoryBankConfig(image_size=args.size, k=args.k)
    rng = np.random.default_rng(0)
    # --- real bank: descriptor size, per-image memory, full RNA step --------------------------------------------
    imgs = rng.integers(0, 255, (args.real, args.size, args.size, 3), dtype=np.uint8)
    imgs = (imgs // 64 * 64).astype(np.uint8)
    bank = MemoryBank.build(imgs, [f"i{i}" for i in range(args.real)], backbone, cfg)
    dim = bank.desc.shape[1]
    with tempfile.TemporaryDirectory() as tmp:
        bank.save(tmp)
        disk = sum(p.stat().st_size for p in Path(tmp).iterdir())
    patch_bytes = sum(p[0].numel() * p.element_size() for p in bank.patches)
    color_bytes = bank.colors[0].numel() * bank.colors.element_size() if bank.colors is not None else 0
    q = imgs[:8]
    t = time.perf_counter()
    feats = bank.extract(q)
    t_bb = time.perf_counter() - t
    t = time.perf_counter()
    idx, _ = bank.query(feats)
    t_q = time.perf_counter() - t
    t = time.perf_counter()
    bank.align(feats, idx)
    bank.align_colors(bank.extract_colors(q), idx)
    t_al = time.perf_counter() - t
    print(f"backbone {backbone.name} ({backbone.source}), {args.size}px, k={args.k}, threads={args.threads}")
    print(f"global descriptor dim {dim}; per banked image: patches {patch_bytes / 1e3:.0f} kB "
          f"({cfg.feature_dtype}), colour {color_bytes / 1e3:.0f} kB, descriptor {dim * 4 / 1e3:.1f} kB")
    print(f"bank memory per 1,000 images: {(patch_bytes + color_bytes + dim * 4) * 1000 / 1e6:.0f} MB in RAM, "
          f"{disk / args.real * 1000 / 1e6:.0f} MB on disk (flat index)")
    n = len(q)
    print(f"full RNA step per query (batch {n}, bank {args.real}): backbone {t_bb / n * 1e3:.1f} ms, "
          f"retrieval {t_q / n * 1e3:.2f} ms, window alignment {t_al / n * 1e3:.1f} ms")
    # --- retrieval at scale -----------------------------------------------------------------------------------
    desc = rng.normal(size=(args.n, dim)).astype(np.float32)
    desc /= np.linalg.norm(desc, axis=1, keepdims=True)
    queries = desc[rng.choice(args.n, 200, replace=False)] + rng.normal(scale=0.05, size=(200, dim)).astype(
        np.float32)
    print(f"\nglobal retrieval, bank of {args.n:,} images, dim {dim}, top-{args.k}")
    print(f"{'index':<28}{'build s':>9}{'ms/query b=1':>14}{'ms/query b=32':>15}{'index MB/1k img':>17}"
          f"{'recall@1':>10}")
    exact = None
    for kind in ("flat", "sq8", "ivfpq"):
        t = time.perf_counter()
        index, eff = build_index(desc, kind, pq_m=64, nprobe=8)
        t_build = time.perf_counter() - t
        one = _ms_per_query(index, queries[:100], args.k, 1)
        many = _ms_per_query(index, queries, args.k, 32)
        size = faiss.serialize_index(index).nbytes / args.n * 1000 / 1e6
        top1 = index.search(queries, 1)[1][:, 0]
        exact = top1 if exact is None else exact
        print(f"{eff:<28}{t_build:>9.2f}{one:>14.2f}{many:>15.2f}{size:>17.2f}{(top1 == exact).mean():>10.2f}")


if __name__ == "__main__":
    main()
