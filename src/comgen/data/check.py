"""Full dataset validation for ``comgen data check``: decode every image and mask, then summarise.

Why separate from the readers: listing a dataset must stay cheap for every stage, while a check decodes
every file to catch corrupt images, masks whose size differs from their image, and mask values that no
defect in ``defects_config.json`` declares, each as one ``DatasetError`` naming the file.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from comgen.data.imageio import read_mask, read_rgb
from comgen.data.readers import SPLITS, Dataset, open_dataset
from comgen.errors import DatasetError
from comgen.progress import progress


@dataclass
class SummaryRow:
    """Counts for one (category, split, label) folder."""

    category: str
    split: str
    label: str
    images: int
    masks: int = 0
    defects: Counter = field(default_factory=Counter)  # defect name -> images showing it
    sizes: set[tuple[int, int]] = field(default_factory=set)


@dataclass
class DatasetSummary:
    """What ``check_dataset`` found: the opened dataset and one row per folder."""

    dataset: Dataset
    rows: list[SummaryRow]

    @property
    def n_images(self) -> int:
        return sum(r.images for r in self.rows)


def _mask_defects(mask: np.ndarray, by_value: dict[int, str], path: Path) -> set[str]:
    values = {int(v) for v in np.unique(mask) if v != 0}
    if not by_value:
        return set()
    unknown = sorted(values - set(by_value))
    if unknown:
        raise DatasetError(path, f"mask pixel value {unknown[0]} is not a pixel_value in defects_config.json")
    return {by_value[v] for v in values}


def check_dataset(root: str | Path, layout: str = "auto", decode: bool = True) -> DatasetSummary:
    """Open and validate a dataset (every image/mask decoded when ``decode``); raise on the first problem."""
    ds = open_dataset(root, layout)
    rows: list[SummaryRow] = []
    for category in ds.categories():
        defects = ds.defects(category)
        by_value = {d.pixel_value: d.name for d in defects.values()}
        samples = [s for split in SPLITS for s in ds.samples(category, split)]
        row_of: dict[tuple[str, str], SummaryRow] = {}
        for s in samples:
            row_of.setdefault((s.split, s.label), SummaryRow(category, s.split, s.label, 0))
        for s in progress(samples, desc=f"check {category}", total=len(samples)):
            row = row_of[(s.split, s.label)]
            row.images += 1
            row.masks += len(s.mask_paths)
            if not decode:
                continue
            img = read_rgb(s.path)
            row.sizes.add(img.shape[:2])
            names: set[str] = set()
            for mp in s.mask_paths:
                mask = read_mask(mp)
                if mask.shape != img.shape[:2]:
                    raise DatasetError(mp, f"mask is {mask.shape[1]}x{mask.shape[0]} but its image "
                                           f"{s.path.name} is {img.shape[1]}x{img.shape[0]}")
                names |= _mask_defects(mask, by_value, mp)
            if s.is_anomalous:
                if not names:  # MVTec AD / folder: the folder is the defect; LOCO without a usable mask
                    names = {s.label} if ds.layout != "loco" else {"(unnamed)" if s.mask_paths else "(no mask)"}
                for name in names:
                    row.defects[name] += 1
        rows.extend(row_of.values())
    return DatasetSummary(dataset=ds, rows=rows)


def render_summary(summary: DatasetSummary) -> None:
    """Print the per-category, per-split, per-label table with rich (defect counts in the last column)."""
    ds = summary.dataset
    table = Table(title=f"{ds.root} ({ds.layout}, {len(ds.categories())} categories, {summary.n_images} images)")
    for col in ("category", "split", "label", "images", "masks", "sizes", "defects"):
        table.add_column(col, justify="right" if col in ("images", "masks") else "left")
    for r in summary.rows:
        sizes = ", ".join(f"{w}x{h}" for h, w in sorted(r.sizes)) or "-"
        defects = ", ".join(f"{k}: {v}" for k, v in sorted(r.defects.items())) or "-"
        table.add_row(r.category, r.split, r.label, str(r.images), str(r.masks), sizes, defects)
    Console(width=160).print(table)
