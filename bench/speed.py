"""Performance table: images/s and peak memory of generate, mask, one training epoch and predict,
next to the bare backbone's forward rate, on one built-in category at the working size.

Each stage runs in a fresh child process, so its peak RSS (VmHWM) is its own.

    python bench/speed.py [--size 256] [--category screw_bag] [--train 60] [--n 100] [--threads 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from child import run_in_child


def _peak_mb() -> float:
    from comgen.runtime import peak_rss_mb

    return peak_rss_mb()


def _stage(name: str, args: dict[str, Any], q: Any) -> None:
    import torch

    torch.set_num_threads(args["threads"])
    from comgen.rundir import RunDir

    run = RunDir.open(args["run"])
    size = args["size"]
    try:
        t = time.perf_counter()
        if name == "backbone":
            from comgen.features.backbone import BackboneConfig, build_backbone

            bb = build_backbone(BackboneConfig())
            x = torch.rand(8, 3, size, size)
            bb(x)
            t = time.perf_counter()
            reps = 5
            for _ in range(reps):
                bb(x)
            items = 8 * reps
        elif name == "generate":
            from comgen.data.readers import open_dataset
            from comgen.generate.config import GenerateConfig
            from comgen.generate.registry import build_generator
            from comgen.generate.writer import write_generated

            train = open_dataset(run.info.dataset).samples(run.info.category, "train")
            cfg = GenerateConfig(backend="compositional", n=args["n"], image_size=size)
            gen = build_generator("compositional", cfg)
            gen.fit(train, run)  # learns the component model once (not timed below)
            t = time.perf_counter()
            items = write_generated(gen, run.generated("compositional"), cfg, log=lambda m: None).written
        elif name == "mask":
            from comgen.masks.run import MaskConfig, compute_masks

            cfg = MaskConfig()
            cfg = cfg.replace(bank=cfg.bank.replace(image_size=size))
            compute_masks(run, "compositional", cfg, rebuild=True, echo=lambda m: None)
            items = args["n"]
        elif name == "train_epoch":
            from comgen.detect.config import DetectorConfig
            from comgen.detect.train import train_detector

            res = train_detector(run, DetectorConfig(image_size=size, epochs=1), log=lambda m: None)
            q.put({"seconds": res.seconds, "items": None, "peak_mb": _peak_mb()})
            return
        elif name == "predict":
            from comgen.data.readers import open_dataset
            from comgen.detect.predict import Detector

            det = Detector.load(run.root)
            images = [s.load_image() for s in open_dataset(run.info.dataset).samples(run.info.category, "test")]
            det.predict(images[:8], notice=None)
            t = time.perf_counter()
            det.predict(images, notice=None)
            items = len(images)
        else:
            raise ValueError(name)
        q.put({"seconds": time.perf_counter() - t, "items": items, "peak_mb": _peak_mb()})
    except Exception as exc:  # report, never hang the parent
        q.put({"error": f"{exc.__class__.__name__}: {exc}"})


def in_child(name: str, **args: Any) -> dict[str, Any]:
    try:
        return run_in_child(_stage, name, args)
    except RuntimeError as exc:
        raise RuntimeError(f"{name}: {exc}") from None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench_runs/speed"))
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--category", default="screw_bag")
    ap.add_argument("--train", type=int, default=60)
    ap.add_argument("--test", type=int, default=40)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    from comgen.data.synth.config import SynthConfig
    from comgen.data.synth.writer import generate_benchmark
    from comgen.rundir import RunDir

    data = args.out / "data"
    synth = SynthConfig(size=args.size, n_train=args.train, n_validation=max(4, args.train // 5), n_test=args.test,
                        categories=[args.category])
    if not (data / "config.yaml").is_file() or SynthConfig.load(data / "config.yaml").hash() != synth.hash():
        generate_benchmark(data, synth)
    run_root = args.out / f"run_{args.size}"
    import shutil

    shutil.rmtree(run_root, ignore_errors=True)
    RunDir.create(run_root, data, args.category)
    common = {"run": str(run_root), "size": args.size, "n": args.n, "threads": args.threads}
    rows = []
    for stage in ("backbone", "generate", "mask", "train_epoch", "predict"):
        r = in_child(stage, **common)
        rate = (r["items"] / r["seconds"]) if r["items"] else None
        rows.append((stage, r["seconds"], rate, r["peak_mb"]))
    print(f"\n{args.category}, {args.size} px, {args.threads} threads, {args.train} train images, "
          f"{args.n} generated anomalies, {args.test} test images\n")
    print("| stage | seconds | images/s | peak RSS (MB) |\n|---|---|---|---|")
    for stage, sec, rate, peak in rows:
        print(f"| {stage} | {sec:.1f} | {'-' if rate is None else f'{rate:.1f}'} | {peak:.0f} |")


if __name__ == "__main__":
    main()
