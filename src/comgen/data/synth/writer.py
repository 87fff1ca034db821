"""Write synthetic categories in the exact MVTec LOCO AD layout plus the generator truth.

Layout per category: ``train/good``, ``validation/good``, ``test/{good,logical_anomalies,structural_anomalies}``,
``ground_truth/<label>/<id>/NNN.png`` (pixel value = the defect's ``pixel_value``), ``defects_config.json``,
and ``truth/<split>/<label>/<id>.png`` (part labels), ``truth/parts.json``, ``truth/defects.json``.
A category is built in a hidden temporary folder and renamed into place, so a crash never leaves a
half-written category where a finished one is expected.
"""

from __future__ import annotations

import json
import os
import shutil
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from comgen.data.synth.categories import Category, category_spec
from comgen.data.synth.config import SynthConfig
from comgen.errors import InputError
from comgen.io import atomic_write_json, write_png
from comgen.progress import progress

SPLIT_IDS = {"train": 0, "validation": 1, "test": 2}
LABEL_IDS = {"good": 0, "logical_anomalies": 1, "structural_anomalies": 2}


def test_counts(n_test: int, logical: bool = True) -> dict[str, int]:
    """Split the test images like MVTec LOCO: about a third each of good, logical and structural (a category
    without logical rules, a texture, has good and structural only)."""
    good = n_test // 3
    n_logical = (n_test - good + 1) // 2 if logical else 0
    counts = {"good": good, "logical_anomalies": n_logical, "structural_anomalies": n_test - good - n_logical}
    return {k: v for k, v in counts.items() if v or k == "good"}


def defect_table(spec: Category) -> list[dict]:
    """``defects_config.json`` entries: unique pixel values; 'missing' regions need only half covered."""
    out = []
    for i, name in enumerate((*spec.logical, *spec.structural)):
        out.append({"defect_name": name, "pixel_value": 255 - i,
                    "saturation_threshold": 0.5 if name.startswith("missing") else 1.0,
                    "relative_saturation": True})
    return out


def _jobs(spec: Category, cfg: SynthConfig) -> list[tuple[str, str, int, str | None]]:
    jobs = [("train", "good", i, None) for i in range(cfg.n_train)]
    jobs += [("validation", "good", i, None) for i in range(cfg.n_validation)]
    for label, n in test_counts(cfg.n_test, logical=bool(spec.logical)).items():
        kinds = {"good": (None,), "logical_anomalies": spec.logical, "structural_anomalies": spec.structural}[label]
        jobs += [("test", label, i, kinds[i % len(kinds)]) for i in range(n)]
    return jobs


def generate_category(out: str | Path, name: str, cfg: SynthConfig, bar_desc: str | None = None) -> Path:
    """Render one category into ``<out>/<name>`` (built aside, then renamed into place)."""
    spec = category_spec(name)
    out = Path(out)
    final = out / name
    tmp = out / f".{name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    table = defect_table(spec)
    values = {d["defect_name"]: d["pixel_value"] for d in table}
    defects: dict[str, str] = {}
    cat_seed = zlib.crc32(name.encode())
    try:
        for split, label, i, defect in progress(_jobs(spec, cfg), desc=bar_desc or f"synth {name}"):
            rng = np.random.default_rng([cfg.seed, cat_seed, SPLIT_IDS[split], LABEL_IDS[label], i])
            scene = spec.render(rng, cfg.size, defect)
            image_id = f"{i:03d}"
            write_png(tmp / split / label / f"{image_id}.png", scene.image)
            write_png(tmp / "truth" / split / label / f"{image_id}.png", scene.labels)
            if defect is not None:
                defects[f"{split}/{label}/{image_id}"] = defect
                regions = [r for r in scene.regions if r.any()] or [np.zeros_like(scene.labels, bool)]
                for k, region in enumerate(regions):
                    write_png(tmp / "ground_truth" / label / image_id / f"{k:03d}.png",
                              region.astype(np.uint8) * np.uint8(values[defect]))
        atomic_write_json(tmp / "defects_config.json", table)
        atomic_write_json(tmp / "truth" / "parts.json",
                          {"parts": {str(k): v for k, v in spec.parts.items()}, "rules": list(spec.rules),
                           "logical": list(spec.logical), "structural": list(spec.structural),
                           **spec.truth_info()})
        atomic_write_json(tmp / "truth" / "defects.json", defects)
        if final.exists():
            if not (final / "truth" / "parts.json").is_file():
                raise InputError(final, "exists and is not a comgen synth category; refusing to replace it")
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _is_ours(out: Path) -> bool:
    cfg = out / "config.yaml"
    if not cfg.is_file():
        return False
    try:
        SynthConfig.load(cfg)
    except Exception:  # noqa: BLE001 - any unreadable config means "not ours"
        return False
    return True


def generate_benchmark(out: str | Path, cfg: SynthConfig | None = None, workers: int = 1) -> list[Path]:
    """Write every selected category under ``out`` and save ``config.yaml`` there; returns category folders.

    Refuses a non-empty folder that an earlier ``comgen synth`` did not write (never clobbers user data).
    ``workers`` > 1 renders categories in parallel processes (0 = one per CPU); output is identical,
    because every image has its own seed.
    """
    cfg = cfg or SynthConfig()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not _is_ours(out):
        raise InputError(out, "folder is not empty and was not written by comgen synth; choose another output")
    out.mkdir(parents=True, exist_ok=True)
    cats = cfg.selected()
    workers = min(len(cats), workers if workers > 0 else (os.cpu_count() or 1))
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            paths = list(pool.map(generate_category, [out] * len(cats), cats, [cfg] * len(cats)))
    else:
        paths = [generate_category(out, name, cfg, bar_desc=f"synth {name} ({k + 1}/{len(cats)})")
                 for k, name in enumerate(cats)]
    cfg.save(out / "config.yaml")
    return paths


def read_defect_names(category_dir: str | Path) -> dict[str, str]:
    """``truth/defects.json``: "<split>/<label>/<id>" -> defect type of each synthetic anomaly."""
    return json.loads((Path(category_dir) / "truth" / "defects.json").read_text(encoding="utf-8"))
