"""The family benchmark: comgen's defaults against anomalib's PatchCore on categories that nobody tuned on.

Why: every comgen default was chosen on the four built-in categories. The procedural family draws a new LOCO-style
category per seed; its report seeds (1000-1011) are never used to choose anything, so this table shows how the
defaults carry over. The peer is anomalib's own PatchCore with the same offline EfficientNet-Lite0 weights, scored by
comgen's evaluator (the same code for both). Each method and category runs in a fresh process, so its peak RSS is
its own. Reruns resume: finished comgen stages and finished peer categories are skipped.

    python bench/family.py --out /tmp/family            # report seeds, the demo's sizes and schedule
    python bench/family.py --out /tmp/family_dev --seeds dev
    python bench/family.py --out /tmp/family_quick --quick --seeds 1000,1001
    python bench/family.py --out /tmp/family --methods cutpaste    # comgen's detector trained on CutPaste's anomalies
    python bench/family.py --out /tmp/family --methods nsa,draem    # ... on NSA-style or DRAEM-style anomalies
    python bench/family.py --out /tmp/family_inst --learn '{"instances": true}'    # with the instance stage
    python bench/family.py --out /tmp/family_sp --prior '{"density": {"area_spread": true}}'  # prior options
    python bench/family.py --out /tmp/family_rm --compositional '{"edit_kinds": ["remove", "transplant"]}'

``cutpaste`` is the value-of-the-anomaly-source row: the same pipeline and detector as ``comgen``, with CutPaste's
anomalies (``generate/baselines``) in place of ComGEN's; ``nsa`` and ``draem`` are the same with NSA-style and
DRAEM-style anomalies.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compositional_options  # noqa: E402  # bench/ sibling: the --compositional option
from child import run_in_child  # noqa: E402

METHODS = ("comgen", "patchcore")
# the comgen pipeline's rows, and the anomaly source of each
SOURCES = {"comgen": "compositional", "cutpaste": "cutpaste", "nsa": "nsa", "draem": "draem"}
# comgen's detector branches, each also scored alone
BRANCHES = ("network", "prior", "composition", "memory", "global", "counts")
TABLE = [("logical_auroc", "logical AUROC"), ("structural_auroc", "structural AUROC"),
         ("logical_spro", "logical sPRO@0.05"), ("structural_spro", "structural sPRO@0.05"),
         ("logical_auroc_mapmax", "logical AUROC (map max)"), ("fit_s", "fit s"),
         ("predict_img_s", "predict img/s"), ("backbone_img_s", "backbone alone img/s"),
         ("peak_rss_mb", "peak RSS MB")]


def _settings(args: argparse.Namespace):
    from comgen.benchmarks.cli import family_option
    from comgen.data.synth.config import SynthConfig
    from comgen.pipeline.demo import demo_settings

    synth, run = demo_settings(args.size, "all", args.quick)
    cats = family_option(args.seeds, "--seeds")
    synth = SynthConfig(size=synth.size, n_train=synth.n_train, n_validation=synth.n_validation,
                        n_test=synth.n_test, categories=cats)
    return synth, run.replace(mask=False)


def _summary(result: dict[str, Any], cat_dir: Path) -> dict[str, Any]:
    """Headline metrics plus AUROC per rule type (good test images against the anomalies of that rule type)."""
    from comgen.evaluate.metrics import image_auroc

    truth = json.loads((cat_dir / "truth" / "parts.json").read_text())
    defects = json.loads((cat_dir / "truth" / "defects.json").read_text())
    m = result["metrics"]
    out: dict[str, Any] = {}
    for group in ("logical", "structural"):
        if group in m:
            out[f"{group}_auroc"] = m[group].get("image_auroc")
            out[f"{group}_spro"] = m[group].get("spro")
            for branch in BRANCHES:  # what each detector branch alone would have scored
                out[f"{group}_auroc_{branch}"] = m[group].get(f"image_auroc_{branch}")
    images = result["images"]
    good = [im for im in images if im["group"] == "good"]
    by_rule: dict[str, list[dict]] = {}
    for im in images:
        if im["group"] != "good":
            kind = truth["defect_rules"][defects[f"test/{im['label']}/{im['image_id']}"]]
            by_rule.setdefault(kind, []).append(im)
    for kind, anomalies in by_rule.items():
        for key, suffix in (("score", ""), ("map_max", "_mapmax"), *((f"{b}_score", f"_{b}") for b in BRANCHES)):
            if any(key not in im for im in good + anomalies):
                continue
            scores = np.array([im[key] for im in good + anomalies])
            labels = np.array([False] * len(good) + [True] * len(anomalies))
            out[f"rule_{kind}{suffix}"] = image_auroc(scores, labels)
    logical = [im for im in images if im["group"] == "logical"]
    if logical:  # the AUROC MVTec's script reports: an image scored by its map's maximum
        scores = np.array([im["map_max"] for im in good + logical])
        out["logical_auroc_mapmax"] = image_auroc(scores, np.array([False] * len(good) + [True] * len(logical)))
    return out


def _comgen_child(data: str, cat: str, out: str, run_cfg: dict, q) -> None:
    try:
        from comgen.data.readers import open_dataset
        from comgen.evaluate.run import evaluate_category
        from comgen.pipeline.config import RunConfig
        from comgen.pipeline.run import run_category
        from comgen.runtime import peak_rss_mb

        cfg = RunConfig.from_dict(run_cfg)
        run = run_category(data, cat, out, cfg, log=lambda m: None)
        result = evaluate_category(open_dataset(data), cat, run.maps, cfg.evaluate)
        stages = json.loads((run.root / "stages.json").read_text())
        sec = {k: float(v["outputs"].get("seconds", 0.0)) for k, v in stages.items()}
        row = _summary(result, Path(data) / cat)
        row["fit_s"] = sum(sec.get(k, 0.0) for k in ("run.learn", "run.generate", "run.train"))
        n_test = len(result["images"])
        row["predict_img_s"] = n_test / max(sec.get("run.predict", 0.0), 1e-9)
        row["backbone_img_s"] = _backbone_rate(cfg)
        row["peak_rss_mb"] = peak_rss_mb()
        q.put(row)
    except Exception as exc:  # noqa: BLE001 - reported by the parent
        q.put({"error": f"{cat}: {type(exc).__name__}: {exc}"})


def _backbone_rate(cfg: Any, n: int = 32) -> float:
    """Images per second of the detector's frozen backbone alone at its working size (the floor under predict)."""
    import torch

    from comgen.features.backbone import build_backbone

    backbone = build_backbone(cfg.detector.backbone).eval()
    x = torch.rand(8, 3, cfg.detector.image_size, cfg.detector.image_size)
    with torch.no_grad():
        backbone(x)  # warm-up
        t0 = time.perf_counter()
        for _ in range(n // 8):
            backbone(x)
    return n / (time.perf_counter() - t0)


def _patchcore_child(data: str, cat: str, out: str, size: int, q) -> None:
    try:
        from comgen.data.readers import open_dataset
        from comgen.peers.patchcore import PatchcoreConfig, run_patchcore

        result = run_patchcore(open_dataset(data), cat, Path(out), PatchcoreConfig(image_size=size))
        row = _summary(result, Path(data) / cat)
        row["fit_s"] = result["fit_seconds"]
        row["predict_img_s"] = result["predict_images_per_second"]
        row["peak_rss_mb"] = result["peak_rss_mb"]
        q.put(row)
    except Exception as exc:  # noqa: BLE001 - reported by the parent
        q.put({"error": f"{cat}: {type(exc).__name__}: {exc}"})


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.0f}" if abs(v) >= 100 else (f"{v:.1f}" if abs(v) >= 10 else f"{v:.3f}")
    return str(v)


def _mean(rows: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return float(np.mean(vals)) if vals else None


def markdown(results: dict[str, dict[str, dict[str, Any]]], rule_types: list[str]) -> str:
    """Per-category table, then means per method, then AUROC per rule type per method."""
    methods = list(results)
    cats = sorted({c for r in results.values() for c in r})
    lines = ["| category | method | " + " | ".join(t for _, t in TABLE) + " |",
             "|---|---|" + "---|" * len(TABLE)]
    for cat in cats:
        for m in methods:
            row = results[m].get(cat, {})
            lines.append(f"| {cat} | {m} | " + " | ".join(_fmt(row.get(k)) for k, _ in TABLE) + " |")
    lines += ["", "| method | " + " | ".join(t for _, t in TABLE) + " |", "|---|" + "---|" * len(TABLE)]
    for m in methods:
        rows = list(results[m].values())
        lines.append(f"| {m} | " + " | ".join(_fmt(_mean(rows, k)) for k, _ in TABLE) + " |")
    lines += ["", "Image AUROC per rule type (mean over the categories that have the rule type; in brackets: how many)",
              "", "| method | " + " | ".join(rule_types) + " |", "|---|" + "---|" * len(rule_types)]
    for m in methods:
        rows = list(results[m].values())
        cells = []
        for kind in rule_types:
            n = sum(1 for r in rows if r.get(f"rule_{kind}") is not None)
            cells.append(f"{_fmt(_mean(rows, f'rule_{kind}'))} ({n})")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    branch_rows = [r for r in results.get("comgen", {}).values()]
    if branch_rows:
        lines += ["", "comgen's branches alone: logical / structural image AUROC (mean over categories), "
                      "then per rule type",
                  "", "| branch | logical | structural | " + " | ".join(rule_types) + " |",
                  "|---|---|---|" + "---|" * len(rule_types)]
        for b in ("", *BRANCHES):
            suffix = f"_{b}" if b else ""
            cells = [_fmt(_mean(branch_rows, f"{group}_auroc{suffix}")) for group in ("logical", "structural")]
            cells += [_fmt(_mean(branch_rows, f"rule_{kind}{suffix}")) for kind in rule_types]
            lines.append(f"| {b or 'fused'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", default="report", help="report (default), dev, or seeds like 1000-1011")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--quick", action="store_true", help="a smoke run at 64 px with a few images")
    ap.add_argument("--learn", default=None,
                    help='component learner options for the comgen pipeline rows, as JSON, e.g. '
                         '\'{"instances": true}\'; an --out keeps to the options its rows were made with')
    compositional_options.add_argument(ap)
    ap.add_argument("--prior", default=None, help="options of the detector's composition prior as JSON (the comgen "
                                                  "pipeline rows), e.g. '{\"learner_seeds\": 3}'")
    ap.add_argument("--run-seed", type=int, default=None,
                    help="the comgen pipeline runs' seed (their learner's, generator's and detector's draws), to "
                         "measure how much one draw moves the figures")
    args = ap.parse_args()
    from comgen.benchmarks.cli import learner_options
    from comgen.data.family import RULE_TYPES
    from comgen.data.synth.config import SynthConfig
    from comgen.data.synth.writer import generate_benchmark
    from comgen.detect.composition_prior import PriorConfig
    from comgen.errors import ComgenError
    from comgen.generate.config import parse_options

    try:
        learn = learner_options(args.learn)
        prior = parse_options(args.prior, "--prior", checked_by=PriorConfig) if args.prior else {}
        synth, run_cfg = _settings(args)
    except ComgenError as exc:
        sys.exit(f"error: {exc}")
    if learn:
        run_cfg = run_cfg.replace(learn=run_cfg.learn.replace(**learn))
    compositional = compositional_options.parse(ap, args.compositional)  # the comgen row's generator options
    if compositional:
        gen = run_cfg.generate
        run_cfg = run_cfg.replace(generate=gen.replace(compositional=gen.compositional.replace(**compositional)))
    if prior:
        det = run_cfg.detector
        merged = det.prior.to_dict()
        for key, value in prior.items():  # a nested option ({"density": {...}}) keeps the block's other settings
            merged[key] = {**merged[key], **value} if isinstance(value, dict) else value
        run_cfg = run_cfg.replace(detector=det.replace(prior=PriorConfig.from_dict(merged, "--prior")))
    if args.run_seed is not None:
        run_cfg = run_cfg.replace(seed=args.run_seed)
    data = args.out / "data"
    start = time.perf_counter()
    if not (data / "config.yaml").is_file() or SynthConfig.load(data / "config.yaml").hash() != synth.hash():
        generate_benchmark(data, synth, workers=0)
    print(f"[family] data: {len(synth.categories)} categories in {time.perf_counter() - start:.0f} s", flush=True)
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - {*METHODS, *SOURCES})
    if unknown:
        known = ", ".join(dict.fromkeys([*METHODS, *SOURCES]))  # comgen is in both
        sys.exit(f"error: unknown method(s) {', '.join(unknown)}; choose from {known}")
    results: dict[str, dict[str, dict[str, Any]]] = {m: {} for m in methods}
    cache = args.out / "results.json"
    saved: dict[str, Any] = json.loads(cache.read_text()) if cache.is_file() else {}
    options = {"learn": learn, **({"compositional": compositional} if compositional else {}),
               **({"prior": prior} if prior else {}),
               **({"run_seed": args.run_seed} if args.run_seed is not None else {})}
    made_with = saved.get("_options", {"learn": {}}) if saved else options  # a new --out takes any options
    if made_with != options:  # rows of other options must not be mixed in
        sys.exit(f"error: {cache} holds rows made with {made_with}, not {options}; choose another --out")
    for m in methods:
        results[m].update(saved.get(m, {}))
    for cat in synth.categories:
        for m in methods:
            if cat in results[m]:
                continue
            t0 = time.perf_counter()
            if m in SOURCES:
                cfg = run_cfg.replace(backend=SOURCES[m])
                row = run_in_child(_comgen_child, str(data), cat, str(args.out / m / cat), cfg.to_dict())
            elif m == "patchcore":
                row = run_in_child(_patchcore_child, str(data), cat, str(args.out / "patchcore" / cat), args.size)
            results[m][cat] = row
            cache.write_text(json.dumps({**saved, **results, "_options": options}, indent=1))  # others' rows kept
            print(f"[family] {cat} {m}: logical {_fmt(row.get('logical_auroc'))} structural "
                  f"{_fmt(row.get('structural_auroc'))} in {time.perf_counter() - t0:.0f} s", flush=True)
    table = markdown(results, list(RULE_TYPES))
    (args.out / "family.md").write_text(table + "\n")
    print(table)
    print(f"[family] total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
