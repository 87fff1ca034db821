"""``comgen demo``: the README's main command. Builds the built-in benchmark and runs every category end to end.

Why these settings: the demo must finish all categories in under 30 minutes on a 2-core CPU with the offline
EfficientNet-Lite0 backbone. It runs at 256 px (at 128 px screws merge into the bag and small scratches vanish)
with 120 training images per category and a short training schedule (12 epochs, 240 anomalies). ``--size 128``
is about three times faster; the component learner then still segments at 256 px. ``--quick`` is a smoke test.
``--seed`` draws the runs again (learner, generator and detector) on the same benchmark images, so that a change
can be judged on several draws rather than one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from comgen.data.synth.config import SynthConfig
from comgen.data.synth.writer import generate_benchmark
from comgen.pipeline.config import RunConfig
from comgen.pipeline.suite import run_suite


def demo_settings(size: int, categories: str, quick: bool) -> tuple[SynthConfig, RunConfig]:
    """Benchmark and run configs of the demo (quick: a few images at 64 px)."""
    if quick:
        synth = SynthConfig(size=64, n_train=16, n_validation=6, n_test=12, categories=categories)
        run = RunConfig(image_size=64, n_anomalies=24, mask=True)
        run = run.replace(detector=run.detector.replace(epochs=2, batch_size=8),
                          learn=run.learn.replace(k_max=6, pixels_per_image=400, max_fit_pixels=8000,
                                                  select_pixels=3000))
        return synth, run
    synth = SynthConfig(size=size, n_train=120, n_validation=30, n_test=90, categories=categories)
    run = RunConfig(image_size=size, n_anomalies=240, learn_size=max(size, 256))
    run = run.replace(detector=run.detector.replace(epochs=12))
    return synth, run


def run_demo(out: str | Path, size: int = 256, categories: str = "all", quick: bool = False,
             force: bool = False, log: Any = print, seed: int = 0) -> dict[str, Any]:
    """Build the benchmark in ``out/data`` (kept while its settings match) and run it into ``out/runs``; ``seed``
    is the runs' seed, not the benchmark's."""
    out = Path(out)
    synth, cfg = demo_settings(size, categories, quick)
    cfg = cfg.replace(seed=seed)
    data = out / "data"
    if force or not (data / "config.yaml").is_file() or SynthConfig.load(data / "config.yaml").hash() != synth.hash():
        log(f"building the built-in benchmark in {data}")
        generate_benchmark(data, synth)
    return run_suite(data, categories, out / "runs", cfg, force=force, log=log, nested=True)
