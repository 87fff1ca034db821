"""Logical validity and speed of the compositional back-end (the family's report seeds; `--family none`: built-ins).

Usage:
    python bench/generation_validity.py [--data DIR] [--size 256] [--train 60] [--n 400] [--ablation]
                                        [--seeds 0,1,2]

For each category: fit CompositionalGenerator on the train split, generate ``--n`` anomalies, and run the
benchmark's rule checker (``comgen.data.synth.truth.violates``) on every *logical* anomaly's edited truth label
map + image. Prints the share that breaks a rule (target >= 0.9; "valid" with the palette rule "a part shows a
colour outside its part's palette", "no-pal" with the category's listed rules only), the share of normal train
images that break a rule (must be 0, palette rule included), per-edit-kind validity, and anomalies/s with masks
(target >= 20/s at 256 px; fit time excluded and printed separately). ``--ablation`` adds the "without
Low-Density Sampling" row.

Two summaries: the mean over categories (each category counts once, however few logical anomalies it made; one
that made none counts as 0) and the pooled share over all logical anomalies. ``--seeds`` draws the anomalies again
with each seed from the same fitted generator and prints both summaries per draw, then their mean and spread, so
that a change is judged against the spread of one draw. A last line pools every draw's logical anomalies per
edit kind. With ``--data``, ``--family`` picks among the folder's categories (every one without it).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("COMGEN_QUIET", "1")

import compositional_options  # noqa: E402  # bench/ sibling: the --compositional option
import numpy as np  # noqa: E402

from comgen.generate.compositional import CompositionalGenerator  # noqa: E402
from comgen.generate.config import CompositionalConfig  # noqa: E402


def evaluate(cat, gen, n, seed, violates):
    t0 = time.perf_counter()
    out = list(gen.generate(n, np.random.default_rng(seed)))
    secs = time.perf_counter() - t0
    per = defaultdict(lambda: [0, 0, 0])
    for a in out:
        if a.kind != "logical":
            continue
        per[a.edit.kind][0] += bool(violates(cat, a.extra["truth_labels"], a.image))
        per[a.edit.kind][1] += 1
        per[a.edit.kind][2] += bool(violates(cat, a.extra["truth_labels"], a.image, palette=False))
    return out, secs, {k: (v[0], v[1], v[2]) for k, v in per.items()}


def run(data: Path, cats, size, n_train, n, ablation, weights, use_backbone, seeds, options: dict,
        instances: bool = True) -> None:
    from comgen.data.readers import open_dataset
    from comgen.data.synth.truth import load_truth, violates

    ds = open_dataset(data)
    cats = ds.select_categories(cats) if cats else ds.categories()  # a ConfigError names an absent one
    rows = []
    print(f"{'category':<22}{'LS':<5}{'seed':>5}{'normal viol.':>13}{'logical':>9}{'valid':>8}{'no-pal':>8}"
          f"{'anom/s':>8}{'fit s':>7}  per kind (with palette rule)")
    for cat in cats:
        train = ds.samples(cat, "train")[:n_train]
        normal_bad = np.mean([bool(violates(cat, load_truth(s), s.load_image())) for s in train])
        settings = [True, False] if ablation else [True]
        model_dir = Path(tempfile.mkdtemp(prefix="comgen-val-"))
        for ls in settings:
            cfg = CompositionalConfig.from_dict({**options, "image_size": size, "low_density": ls}, "--compositional")
            cfg = cfg.replace(learner=cfg.learner.replace(backbone_weights=weights, use_backbone=use_backbone,
                                                          instances=instances))  # keeps --compositional's learner
            gen = CompositionalGenerator(cfg)
            t0 = time.perf_counter()
            from comgen.rundir import RunDir

            gen.fit(train, RunDir.create(model_dir, data, cat))  # learns once, reused by the ablation row and seeds
            fit_s = time.perf_counter() - t0
            for seed in seeds:
                out, secs, per = evaluate(cat, gen, n, seed, violates)
                kinds = " ".join(f"{k}:{v[0]}/{v[1]}" for k, v in sorted(per.items()))
                r = Row(cat, ls, seed, len(out) / secs, per)
                rows.append(r)
                print(f"{cat:<22}{'on' if ls else 'off':<5}{seed:>5}{normal_bad:>13.2f}{r.total:>9}"
                      f"{r.valid:>8.2f}{r.valid_no_palette:>8.2f}{r.speed:>8.1f}"
                      f"{fit_s:>7.1f}  {kinds}", flush=True)
        shutil.rmtree(model_dir, ignore_errors=True)
    summarise([r for r in rows if r.low_density and not is_texture(r.category)], seeds, size)


@dataclass
class Row:
    category: str
    low_density: bool
    seed: int
    speed: float  # anomalies/s with masks
    # edit kind -> logical anomalies that break a rule (palette rule included), made, break a listed rule
    per_kind: dict[str, tuple[int, int, int]] = field(default_factory=dict)

    @property
    def hits(self) -> int:
        return sum(v[0] for v in self.per_kind.values())

    @property
    def total(self) -> int:
        return sum(v[1] for v in self.per_kind.values())

    @property
    def hits_no_palette(self) -> int:
        return sum(v[2] for v in self.per_kind.values())

    @property
    def valid(self) -> float:
        return self.hits / max(self.total, 1)

    @property
    def valid_no_palette(self) -> float:
        return self.hits_no_palette / max(self.total, 1)


def summarise(rows: list[Row], seeds: list[int], size: int) -> None:
    """Per draw: the mean over object categories and the pooled share; then their mean and spread over draws.
    Textures are left out: they have no logical rule to break."""
    cats = sorted({r.category for r in rows})
    means, pooled = [], []
    print()
    for seed in seeds:
        got = [r for r in rows if r.seed == seed]
        if not got:
            continue
        total = sum(r.total for r in got)
        means.append(float(np.mean([r.valid for r in got])))
        pooled.append(sum(r.hits for r in got) / max(total, 1))
        print(f"seed {seed}: mean validity (LS on, {len(got)} object categories): {means[-1]:.3f} (without the "
              f"palette rule {np.mean([r.valid_no_palette for r in got]):.3f}); pooled over "
              f"{total} logical anomalies: {pooled[-1]:.3f}; categories without a logical anomaly: "
              f"{sum(r.total == 0 for r in got)}; mean speed: {np.mean([r.speed for r in got]):.1f} anomalies/s "
              f"at {size} px")
    kinds: dict[str, list[int]] = {}
    for r in rows:
        for k, (hits, made, _) in r.per_kind.items():
            kinds.setdefault(k, [0, 0])
            kinds[k][0] += hits
            kinds[k][1] += made
    if kinds:  # which edit kinds break no rule (pooled over the categories and draws)
        print("pooled per edit kind: " + ", ".join(f"{k} {h}/{m} ({h / m:.2f})" for k, (h, m) in sorted(kinds.items())))
    if len(means) > 1:
        print(f"over {len(means)} draws: mean validity {np.mean(means):.3f} (sd {np.std(means, ddof=1):.3f}), "
              f"pooled {np.mean(pooled):.3f} (sd {np.std(pooled, ddof=1):.3f})")
        for cat in cats:
            v = [r.valid for r in rows if r.category == cat]
            print(f"  {cat:<20} {np.mean(v):.3f} (range {min(v):.3f}-{max(v):.3f}, "
                  f"{int(np.mean([r.total for r in rows if r.category == cat]))} logical per draw)")


def is_texture(cat: str) -> bool:
    from comgen.data.family.spec import draw_spec, family_seed, is_family

    return is_family(cat) and draw_spec(family_seed(cat)).kind == "texture"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--categories", default="", help="comma-separated categories (overrides --family)")
    ap.add_argument("--family", default=None, help="seeds of the procedural family: report (default without "
                                                   "--data; with --data every category of it), dev, a range "
                                                   "like 1000-1011, or none for the built-in categories")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--train", type=int, default=60)
    # about half of the anomalies are logical; with 100 the mean over the categories was too noisy to tell
    # changes of a few points apart (docs/experiments.md)
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0, help="the generator's draw (ignored with --seeds)")
    ap.add_argument("--seeds", default="", help="several draws from the same fitted generator, e.g. 0,1,2")
    ap.add_argument("--weights", default="auto")
    ap.add_argument("--no-backbone", action="store_true")
    ap.add_argument("--ablation", action="store_true")
    ap.add_argument("--pixel-classes", action="store_true", help="the colour classes alone (no instance stage)")
    compositional_options.add_argument(ap)
    a = ap.parse_args()
    options = compositional_options.parse(ap, a.compositional)
    try:
        seeds = [int(v) for v in a.seeds.split(",") if v.strip()] or [a.seed]
    except ValueError:
        ap.error(f"--seeds takes whole numbers separated by commas, got {a.seeds!r}")
    from comgen.benchmarks.cli import bench_categories
    from comgen.errors import ComgenError, ConfigError

    try:
        cats = bench_categories(a.categories, a.family, a.data)
    except ConfigError as exc:
        ap.error(str(exc))
    tmp = None  # a benchmark made here is deleted at the end; one passed with --data is the user's
    if a.data is None:
        from comgen.data.synth import SynthConfig, generate_benchmark

        tmp = Path(tempfile.mkdtemp(prefix="comgen-val-data-"))
        kw = dict(size=a.size, n_train=a.train, n_validation=4, n_test=8)
        if cats:
            kw["categories"] = cats
        generate_benchmark(tmp, SynthConfig(**kw))
        a.data = tmp
    try:
        run(a.data, cats, a.size, a.train, a.n, a.ablation, a.weights, not a.no_backbone, seeds, options,
            not a.pixel_classes)
    except ComgenError as exc:  # an unreadable dataset or image: one line naming the file
        raise SystemExit(f"error: {exc}") from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
