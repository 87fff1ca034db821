"""Writes a generated anomaly set to disk (``RunDir.generated(backend)``); ``comgen.data.generated`` reads it.

Layout: ``images/<id>.png``, ``masks/<id>.png`` (0/255), optional ``gates/<id>.png`` (soft map 0..255) and
``truth/<id>.png`` (synth part labels after the edit), ``manifest.jsonl`` (one line per anomaly, contract in
docs), ``preview.png``, ``config.yaml``.

Why blocks of indices: anomaly ``index`` belongs to block ``index // chunk``, and each block is generated with its
own RNG ``default_rng([seed, block])``. So output depends only on (fitted generator, seed, chunk), never on
what ran before: a resumed run regenerates the unfinished blocks and skips the items already listed, giving
byte-identical files to an uninterrupted run; and ``--shard i/n`` takes blocks ``b % n == i``, so shards write
disjoint indices into one folder without locks. Blocks (not single indices) let a back-end batch work (diffusion)
and keep within-call uniqueness. Each shard appends to its own ``manifest.shard-i-of-n.jsonl``; the last shard to
finish merges them into ``manifest.jsonl`` (``shards.merge_shards``; ``read_generated`` merges either way before).

Exactness needs ``generate`` to depend only on the RNG and the fitted state (true of the baselines). A generator
that keeps state across calls (the compositional one refuses edits it made before) may define the optional hook
``resume_state(lines)``: it is called before every block with the manifest lines of all lower indices, in both
uninterrupted and resumed runs, so it can rebuild that state identically from disk. A shard cannot see the lower
blocks of other shards; how sharding stays exact for such a generator is in ``shards``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from comgen.data.generated import MANIFEST, REVISION_FILE, merged_lines, saved_revision
from comgen.errors import ConfigError, InputError
from comgen.generate.config import GenerateConfig
from comgen.generate.items import item_id, write_item, write_preview
from comgen.generate.protocol import AnomalyGenerator
from comgen.generate.registry import generator_revision
from comgen.generate.shards import (
    block_anomalies,
    done_marker,
    merge_shards,
    record_lookups,
    shard_blocks,
    shard_count,
    shard_manifest,
    speculative,
    unfinished,
)
from comgen.io import append_jsonl, atomic_write_json, atomic_write_text
from comgen.progress import progress
from comgen.records import Anomaly


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
    if log is not None and getattr(generator, "fit_note", ""):  # what fitting chose that a user should know
        log(f"{backend}: {generator.fit_note}")
    stateful = callable(getattr(generator, "resume_state", None))
    guess = speculative(generator, shard[1])  # a shard has not got the lower blocks; the merge checks its guess

    def produce() -> Iterator[tuple[int, Anomaly]]:
        for blk in blocks:
            if all(item_id(idx) in done for idx in blk):
                continue
            lower = [ln for ln in merged_lines(out) if ln.get("index", 0) < blk.start] if stateful else None
            for idx, anomaly in block_anomalies(generator, cfg, blk, None if guess else lower):
                if item_id(idx) not in done:
                    yield idx, anomaly
            if guess:
                record_lookups(out, generator, blk, cfg.chunk)

    start = time.perf_counter()
    written: set[int] = set()
    for idx, anomaly in progress(produce(), desc=f"generate {backend}", total=len(todo)):
        append_jsonl(manifest, write_item(out, idx, anomaly, backend))
        written.add(idx)
    seconds = time.perf_counter() - start
    missing = [idx for idx in todo if idx not in written]
    if todo and not written:
        raise InputError(f"{backend} generator", f"produced none of the {len(todo)} anomalies requested")
    if _finish(generator, out, cfg, bool(todo), log) and cfg.preview:
        write_preview(out, merged_lines(out), cfg.preview)
    lines = merged_lines(out)
    summary = WriteSummary(out, len(written), skipped, missing, seconds, len(lines))
    if log:
        log(f"{backend}: wrote {summary.written}, kept {skipped} already done, {len(missing)} missing; "
            f"{summary.total_in_folder} in {out} ({summary.rate:.1f}/s)")
    return summary


def _finish(generator: AnomalyGenerator, out: Path, cfg: GenerateConfig, worked: bool,
            log: Callable[[str], None] | None) -> bool:
    """Write the one ``manifest.jsonl`` (unsharded), or mark this shard done and merge when it is the last one.

    True when the caller should write the preview (a merge writes its own).
    """
    i, k = cfg.shard_index
    if k == 1:
        atomic_write_text(out / MANIFEST, "".join(json.dumps(ln) + "\n" for ln in merged_lines(out)))
        return True
    if not worked and (out / MANIFEST).is_file() and shard_count(out) is None:
        return False  # a shard run again after the merge: the set is whole, leave no marker behind
    atomic_write_json(out / done_marker(i, k), {"n": cfg.n})
    if not unfinished(out, k, cfg.n):
        merge_shards(generator, out, cfg, log)
    return False


def merge_generated(generator: AnomalyGenerator, out: str | Path, cfg: GenerateConfig,
                    log: Callable[[str], None] | None = None) -> bool:
    """Merge the finished shards of ``out`` into one set (``comgen generate --merge-shards``) with a *fitted*
    generator and the shards' config; False when there was nothing left to merge."""
    out = Path(out)
    _check_config(out, cfg)  # the merge regenerates blocks, so only with the config the shards used
    k = cfg.shard_index[1] if cfg.shard else shard_count(out)
    if k is None or k == 1:
        if (out / MANIFEST).is_file():
            if log:
                log(f"nothing to merge: {out} already holds one set")
            return False
        raise InputError(out, "no shards to merge here; run `comgen generate ... --shard i/n` for each i first")
    left = unfinished(out, k, cfg.n)
    if left:
        raise InputError(out, f"shard(s) {', '.join(f'{i}/{k}' for i in left)} have not finished (for --n {cfg.n}); "
                              "run them first")
    return merge_shards(generator, out, cfg, log)
