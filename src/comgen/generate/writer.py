"""Writes a generated anomaly set to disk (``RunDir.generated(backend)``); ``comgen.data.generated`` reads it.

Layout: ``images/<id>.png``, ``masks/<id>.png`` (0/255), optional ``gates/<id>.png`` (soft map 0..255) and
``truth/<id>.png`` (synth part labels after the edit), ``manifest.jsonl`` (one line per anomaly, contract in
docs), ``preview.png``, ``config.yaml``.

Why blocks of indices: anomaly ``index`` belongs to block ``index // chunk``, and each block is generated with its
own RNG ``default_rng([seed, block])``. So output depends only on (fitted generator, seed, chunk), never on
what ran before: a resumed run regenerates the unfinished blocks and skips the items already listed, giving
byte-identical files to an uninterrupted run; and ``--shard i/n`` takes blocks ``b % n == i``, so shards write
disjoint indices into one folder without locks. Blocks (not single indices) let a back-end batch work (diffusion)
and keep within-call uniqueness. Each shard appends to its own ``manifest.shard-i-of-n.jsonl``; when every shard
has finished, the union is written to ``manifest.jsonl`` (``read_generated`` merges either way).

Exactness needs ``generate`` to depend only on the RNG and the fitted state (true of the baselines). A generator
that keeps state across calls (the compositional one refuses edits it made before) may define the optional hook
``resume_state(lines)``: it is called before every block with the manifest lines of all lower indices, in both
uninterrupted and resumed runs, so it can rebuild that state identically from disk.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from comgen.data.generated import MANIFEST, REVISION_FILE, load_item, merged_lines, saved_revision
from comgen.errors import ConfigError, InputError
from comgen.generate.config import GenerateConfig
from comgen.generate.protocol import AnomalyGenerator
from comgen.generate.registry import generator_revision
from comgen.io import append_jsonl, atomic_write_json, atomic_write_text, write_png
from comgen.progress import progress
from comgen.records import Anomaly

def item_id(index: int) -> str:
    return f"{index:06d}"


def shard_manifest(i: int, n: int) -> str:
    return MANIFEST if n == 1 else f"manifest.shard-{i}-of-{n}.jsonl"


def _done_marker(i: int, n: int) -> str:
    return f".done.shard-{i}-of-{n}.json"


def shard_blocks(n: int, chunk: int, shard: tuple[int, int] = (0, 1)) -> list[range]:
    """The index blocks (ranges) that shard ``(i, k)`` generates out of ``n`` anomalies."""
    i, k = shard
    blocks = [range(b * chunk, min(n, (b + 1) * chunk)) for b in range((n + chunk - 1) // chunk)]
    return [blk for b, blk in enumerate(blocks) if b % k == i]


@dataclass
class WriteSummary:
    """What one ``write_generated`` call did (``rate`` = anomalies written per second, files included)."""

    out: Path
    written: int
    skipped: int
    missing: list[int] = field(default_factory=list)
    seconds: float = 0.0
    total_in_folder: int = 0

    @property
    def rate(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0


# --- writing ------------------------------------------------------------------------------
def _check_config(out: Path, cfg: GenerateConfig) -> None:
    """Refuse to mix anomalies of different configs in one folder (n and shard may differ)."""
    path = out / "config.yaml"
    if not path.exists():
        return
    try:
        old = GenerateConfig.load(path).identity()
    except ConfigError:
        raise ConfigError(path, "existing generated set has an unreadable config; use another --out") from None
    new = cfg.identity()
    if old != new:
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise ConfigError(out, f"already holds anomalies generated with another config (differs in: "
                               f"{', '.join(diff)}); use another --out or remove the folder")
    saved, current = saved_revision(out), generator_revision(cfg.backend)
    if saved != current:
        raise ConfigError(out, f"already holds anomalies of the {cfg.backend} generator's revision {saved}, and "
                               f"this comgen makes revision {current}; use another --out or remove the folder")


def _repair_jsonl(path: Path) -> None:
    """Drop a torn last line left by a crash, so the next append starts on a fresh line."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        atomic_write_text(path, data[: data.rfind(b"\n") + 1].decode("utf-8", errors="replace"))


def _check_anomaly(a: Anomaly, index: int, backend: str) -> None:
    img, mask = np.asarray(a.image), np.asarray(a.mask)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise InputError(f"{backend} generator", f"anomaly {index}: image must be HxWx3 uint8, got "
                                                  f"{img.shape} {img.dtype}")
    if mask.shape != img.shape[:2]:
        raise InputError(f"{backend} generator", f"anomaly {index}: mask is {mask.shape} but image is "
                                                  f"{img.shape[:2]}")


def _to_uint8_map(arr: np.ndarray) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    return np.clip(np.rint(np.nan_to_num(arr.astype(np.float32)) * 255.0), 0, 255).astype(np.uint8)


def write_item(out: Path, index: int, a: Anomaly, backend: str) -> dict[str, Any]:
    """Write one anomaly's files atomically and return its manifest line (not yet appended)."""
    _check_anomaly(a, index, backend)
    iid = item_id(index)
    mask = np.asarray(a.mask).astype(bool)
    write_png(out / "images" / f"{iid}.png", a.image)
    write_png(out / "masks" / f"{iid}.png", mask)
    gate = truth = None
    if a.extra.get("gate") is not None:
        gate = f"gates/{iid}.png"
        write_png(out / gate, _to_uint8_map(a.extra["gate"]))
    if a.extra.get("truth_labels") is not None:
        truth = f"truth/{iid}.png"
        write_png(out / truth, np.asarray(a.extra["truth_labels"]).astype(np.uint8))
    return {
        "id": iid, "index": index, "file": f"images/{iid}.png", "mask": f"masks/{iid}.png",
        "kind": a.edit.kind, "category": a.kind, "classes": [int(c) for c in a.edit.classes],
        "tokens": a.edit.tokens(), "prompt": str(a.extra.get("prompt", "") or ""),
        "params": json.loads(json.dumps(a.edit.params, default=_plain)), "target": list(a.edit.target),
        "density": None if a.density is None else float(a.density), "source": str(a.source),
        "backend": a.backend or backend, "gate": gate, "truth": truth, "area": int(mask.sum()),
    }


def _plain(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def write_preview(out: Path, lines: list[dict[str, Any]], count: int = 16, tile: int = 128) -> Path | None:
    """A grid of the first ``count`` anomalies with their mask contours in red (a quick visual check)."""
    import cv2

    lines = lines[:count]
    if not lines:
        return None
    cols = min(4, len(lines))
    rows = (len(lines) + cols - 1) // cols
    grid = np.zeros((rows * (tile + 2), cols * (tile + 2), 3), np.uint8)
    for k, line in enumerate(lines):
        image, mask = load_item(out, line)
        image = cv2.resize(image, (tile, tile), interpolation=cv2.INTER_AREA)
        small = cv2.resize(mask.astype(np.uint8), (tile, tile), interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(small, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        image = np.ascontiguousarray(image)
        cv2.drawContours(image, contours, -1, (255, 0, 0), 1)
        r, c = divmod(k, cols)
        grid[r * (tile + 2) + 1:r * (tile + 2) + 1 + tile, c * (tile + 2) + 1:c * (tile + 2) + 1 + tile] = image
    return write_png(out / "preview.png", grid)


def _marker_n(marker: Path) -> int | None:
    """The anomaly count a shard's done-marker records (None when it is damaged: the shard counts as unfinished)."""
    try:
        value = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    return value.get("n") if isinstance(value, dict) else None


def _consolidate(out: Path, shard: tuple[int, int], n: int) -> bool:
    """Write the merged ``manifest.jsonl`` once every shard of this run has finished."""
    i, k = shard
    if k > 1:
        atomic_write_json(out / _done_marker(i, k), {"n": n})
        for j in range(k):
            marker = out / _done_marker(j, k)
            if not marker.exists() or _marker_n(marker) != n:
                return False
    merged = merged_lines(out)
    atomic_write_text(out / MANIFEST, "".join(json.dumps(ln) + "\n" for ln in merged))
    return True


def _check_capacity(generator: AnomalyGenerator, cfg: GenerateConfig) -> None:
    """Refuse up front a request for more unique anomalies than the generator can make (optional
    ``capacity()`` hook; generators without it are unbounded)."""
    capacity = getattr(generator, "capacity", None)
    if not callable(capacity):
        return
    reset = getattr(generator, "resume_state", None)
    if callable(reset):
        reset([])  # capacity of the whole run, not of whatever an earlier call left in the generator
    cap = capacity()
    if cfg.n > cap:
        backend = getattr(generator, "name", cfg.backend)
        raise InputError(f"{backend} generator", f"asked for {cfg.n} unique anomalies but only {int(cap)} "
                                                 "distinct ones can exist; lower --n or allow more edit kinds")


def write_generated(generator: AnomalyGenerator, out: str | Path, cfg: GenerateConfig,
                    log: Callable[[str], None] | None = None) -> WriteSummary:
    """Generate ``cfg.n`` anomalies (this shard's share) with a *fitted* generator into ``out``; resumable."""
    out = Path(out)
    _check_capacity(generator, cfg)  # before anything is written: never leave a partial folder behind
    out.mkdir(parents=True, exist_ok=True)
    _check_config(out, cfg)
    cfg.replace(shard=None).save(out / "config.yaml")  # identical for every shard
    atomic_write_json(out / REVISION_FILE, {"backend": cfg.backend, "revision": generator_revision(cfg.backend)})
    shard = cfg.shard_index
    manifest = out / shard_manifest(*shard)
    _repair_jsonl(manifest)
    done = {ln["id"] for ln in merged_lines(out)}
    blocks = shard_blocks(cfg.n, cfg.chunk, shard)
    todo = [idx for blk in blocks for idx in blk if item_id(idx) not in done]
    skipped = sum(len(blk) for blk in blocks) - len(todo)
    backend = getattr(generator, "name", cfg.backend)

    resume_state = getattr(generator, "resume_state", None)

    def produce() -> Iterator[tuple[int, Anomaly]]:
        for blk in blocks:
            if all(item_id(idx) in done for idx in blk):
                continue
            if callable(resume_state):  # optional hook: rebuild cross-call state (e.g. dedup keys) from lines
                resume_state([ln for ln in merged_lines(out) if ln.get("index", 0) < blk.start])
            rng = np.random.default_rng([cfg.seed, blk.start // cfg.chunk])
            for idx, anomaly in zip(blk, generator.generate(len(blk), rng)):
                if item_id(idx) not in done:
                    yield idx, anomaly

    start = time.perf_counter()
    written: set[int] = set()
    for idx, anomaly in progress(produce(), desc=f"generate {backend}", total=len(todo)):
        append_jsonl(manifest, write_item(out, idx, anomaly, backend))
        written.add(idx)
    seconds = time.perf_counter() - start
    missing = [idx for idx in todo if idx not in written]
    if todo and not written:
        raise InputError(f"{backend} generator", f"produced none of the {len(todo)} anomalies requested")
    _consolidate(out, shard, cfg.n)
    lines = merged_lines(out)
    if cfg.preview:
        write_preview(out, lines, cfg.preview)
    summary = WriteSummary(out, len(written), skipped, missing, seconds, len(lines))
    if log:
        log(f"{backend}: wrote {summary.written}, kept {skipped} already done, {len(missing)} missing; "
            f"{summary.total_in_folder} in {out} ({summary.rate:.1f}/s)")
    return summary
