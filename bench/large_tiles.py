"""Large images: native-resolution tiles against the whole image squashed into one square.

A synthetic 1700x1000 category (tests/detect/conftest.py ``large_image``): a smooth grey texture; generated
anomalies carry 6 defects of 4-9 px each (a red/cyan checker whose mean is the background's, so shrinking the image
averages it away); the test set holds normals and images with one 6x6 px defect at a random place. Each mode trains
the same CSDA detector on the same images and is scored on the same test set:

  image AUROC : defect images against normals;
  peak hit    : share of defect images whose map maximum lies within 16 px of the defect (original resolution);
  tiles       : tiles per image; train s / predict s per image on this machine's CPU threads.

    python bench/large_tiles.py [--normals 4] [--anomalies 4] [--test 8] [--epochs 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "detect"))


def tiled_splits(cfg, normals, val, gen):  # noqa: ANN001, ANN201
    from comgen.detect.data import Material, Splits, TiledParts

    def parts(items, prefix):  # noqa: ANN001, ANN202
        p = TiledParts(cfg)
        for i, (img, mask) in enumerate(items):
            p.add(img, mask.astype(np.float32), float(mask.any()), f"{prefix}{i}", [f"{prefix}{i}"])
        return p

    n, v = parts(normals, "n"), parts(val, "v")
    bank = n.material()
    return Splits(Material.concat([bank, parts(gen, "g").material()]), v.material(), bank.images, bank.ids,
                  n.whole_images(), v.whole_images())


def square_splits(size, normals, val, gen):  # noqa: ANN001, ANN201
    """The untiled path: every image squashed to size x size; a mask keeps every cell a defect pixel touches."""
    import cv2

    from comgen.data.imageio import resize_rgb
    from comgen.detect.data import Material, Splits

    def mat(items, prefix):  # noqa: ANN001, ANN202
        imgs = np.stack([resize_rgb(i, size) for i, _ in items])
        tg = np.stack([cv2.resize(m.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA) > 0
                       for _, m in items]).astype(np.float32)
        ids = [f"{prefix}{i}" for i in range(len(items))]
        return Material(imgs, tg, np.array([float(m.any()) for _, m in items], np.float32), ids, [[i] for i in ids])

    n = mat(normals, "n")
    return Splits(Material.concat([n, mat(gen, "g")]), Material.concat([mat(val, "v")]), n.images, n.ids)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--normals", type=int, default=4)
    ap.add_argument("--anomalies", type=int, default=4)
    ap.add_argument("--test", type=int, default=8, help="defect images (and as many normals)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--weights", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from conftest import large_image
    from sklearn.metrics import roc_auc_score

    from comgen.detect.config import DetectorConfig
    from comgen.detect.predict import Detector
    from comgen.detect.tiling import grid_for, is_tiled
    from comgen.detect.train import train_detector
    from comgen.features.backbone import BackboneConfig

    rng = np.random.default_rng(args.seed)

    def pick(n_defects: int) -> tuple[np.ndarray, np.ndarray]:
        img, _, mask = large_image(rng, n_defects)
        return img, mask

    normals = [pick(0) for _ in range(args.normals)]
    val = [pick(0) for _ in range(2)] + [pick(6) for _ in range(2)]
    gen = [pick(6) for _ in range(args.anomalies)]
    where = [(int(rng.integers(0, 994)), int(rng.integers(0, 1694))) for _ in range(args.test)]
    test = [large_image(rng, at=a)[0] for a in where] + [pick(0)[0] for _ in range(args.test)]
    labels = np.r_[np.ones(args.test), np.zeros(args.test)]

    common = dict(epochs=args.epochs, augment_variants=0, patience=args.epochs, seed=args.seed,
                  backbone=BackboneConfig(weights=args.weights))
    modes = {"native tiles (tile_scale 1.0, 128 px, overlap 0.125)":
             DetectorConfig(image_size=128, tile_scale=1.0, tile_overlap=0.125, **common),
             "tiles 2 (shorter side 512 px, 256 px tiles)": DetectorConfig(image_size=256, tiles=2, **common),
             "whole image squashed to 256 x 256": DetectorConfig(image_size=256, **common)}
    print(f"{len(normals)} normals, {len(gen)} generated anomalies, {len(val)} validation, "
          f"{len(test)} test images of 1700x1000; {args.epochs} epochs; {args.threads} threads")
    print("| mode | tiles / image | image AUROC | peak hit | train s | predict s / image |\n|---|---|---|---|---|---|")
    for name, cfg in modes.items():
        splits = tiled_splits(cfg, normals, val, gen) if is_tiled(cfg) else square_splits(cfg.image_size, normals,
                                                                                          val, gen)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            train_detector(Path(tmp), cfg, splits=splits, log=lambda m: None, cpu=True)
            t_train = time.perf_counter() - t0
            det = Detector.load(tmp, device="cpu")
            t0 = time.perf_counter()
            scores, maps = det.predict(test, notice=None)
            t_pred = (time.perf_counter() - t0) / len(test)
        hits = [abs(p[0] - (y + 3)) <= 16 and abs(p[1] - (x + 3)) <= 16
                for (y, x), m in zip(where, maps[:args.test])
                for p in [np.unravel_index(int(m.argmax()), m.shape)]]
        n_tiles = len(grid_for(cfg, (1000, 1700))) if is_tiled(cfg) else 1
        print(f"| {name} | {n_tiles} | {roc_auc_score(labels, scores):.3f} | {np.mean(hits):.2f} | {t_train:.0f} | "
              f"{t_pred:.2f} |", flush=True)


if __name__ == "__main__":
    main()
