"""Sharded generation: which blocks a shard writes, a shard's bookkeeping files, and the merge into one set.

Why it is exact: block ``b`` (indices ``b*chunk`` up to ``(b+1)*chunk``) is generated with ``default_rng([seed, b])``,
so what a block makes depends on its index alone, whoever generates it. The one exception is a generator that
refuses duplicates of the edits of lower blocks (the ``resume_state`` hook): a shard has not got the lower blocks
that other shards write. So a shard generates each block as if nothing came before it and records the duplicate
keys the block looked up (``consulted_keys`` hook); the merge walks the blocks in order and regenerates, with the
exact lower lines, only the blocks whose lookups hit a key of a lower line (``line_keys`` hook). A block that hit
none made the same choices as in an unsharded run. The merged folder is byte-identical to an unsharded run with the
same seed (files, manifest lines, their order, preview); the shard files are removed.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from comgen.data.generated import MANIFEST, listed_path, merged_lines
from comgen.errors import ArtifactError, InputError
from comgen.generate.config import GenerateConfig
from comgen.generate.items import write_item, write_preview
from comgen.generate.protocol import AnomalyGenerator
from comgen.io import atomic_write_json, atomic_write_text
from comgen.records import Anomaly

SHARD_DIR = ".shards"  # per-block lookup records of the shards; removed by the merge
_SHARD_FILE = re.compile(r"^(?:manifest|\.done)\.shard-(\d+)-of-(\d+)\.jsonl?$")


def shard_blocks(n: int, chunk: int, shard: tuple[int, int] = (0, 1)) -> list[range]:
    """The index blocks (ranges) that shard ``(i, k)`` generates out of ``n`` anomalies."""
    i, k = shard
    blocks = [range(b * chunk, min(n, (b + 1) * chunk)) for b in range((n + chunk - 1) // chunk)]
    return [blk for b, blk in enumerate(blocks) if b % k == i]


def shard_manifest(i: int, n: int) -> str:
    return MANIFEST if n == 1 else f"manifest.shard-{i}-of-{n}.jsonl"


def done_marker(i: int, n: int) -> str:
    return f".done.shard-{i}-of-{n}.json"


def speculative(generator: AnomalyGenerator, shards: int) -> bool:
    """Whether a shard generates its blocks without the lower lines (and records its lookups for the merge)."""
    return shards > 1 and callable(getattr(generator, "resume_state", None))


def block_anomalies(generator: AnomalyGenerator, cfg: GenerateConfig, blk: range,
                    lower: list[dict[str, Any]] | None) -> Iterator[tuple[int, Anomaly]]:
    """The anomalies of one block: after the lines of all lower indices (``lower``; exact) or after none (None)."""
    reset = getattr(generator, "resume_state", None)
    if callable(reset):  # optional hook: rebuild cross-call state (e.g. duplicate keys) from lines
        reset(lower or [])
    rng = np.random.default_rng([cfg.seed, blk.start // cfg.chunk])
    yield from zip(blk, generator.generate(len(blk), rng))


def _keys_path(out: Path, block: int) -> Path:
    return out / SHARD_DIR / f"keys-{block:06d}.json"


def record_lookups(out: Path, generator: AnomalyGenerator, blk: range, chunk: int) -> None:
    """Save the duplicate keys a speculatively generated block looked up (nothing when the hook is missing: the
    merge then regenerates the block)."""
    consulted = getattr(generator, "consulted_keys", None)
    if callable(consulted):
        atomic_write_json(_keys_path(out, blk.start // chunk), {"keys": list(consulted())})


def _hits(out: Path, block: int, below: set[str]) -> bool:
    """Whether the block's recorded lookups hit a key of a lower line (or were not recorded)."""
    record = _read_json(_keys_path(out, block))
    keys = record.get("keys") if isinstance(record, dict) else None
    return not isinstance(keys, list) or not below.isdisjoint(map(str, keys))


def _read_json(path: Path) -> Any:
    """A small bookkeeping file's content, or None when it is missing or damaged (the work is then redone)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def shard_count(out: Path) -> int | None:
    """How many shards the folder's shard files were written for (None when it has none)."""
    counts = {int(m.group(2)) for p in out.iterdir() if (m := _SHARD_FILE.match(p.name))} if out.is_dir() else set()
    if len(counts) > 1:
        raise ArtifactError(out, f"holds shards of {' and '.join(map(str, sorted(counts)))}-way splits; "
                                 "remove the folder and generate again with one --shard i/n split")
    return counts.pop() if counts else None


def unfinished(out: Path, shards: int, n: int) -> list[int]:
    """The shards of a ``shards``-way split of ``n`` anomalies that have not finished."""
    missing = []
    for i in range(shards):
        done = _read_json(out / done_marker(i, shards))
        if not isinstance(done, dict) or done.get("n") != n:
            missing.append(i)
    return missing


def _drop_files(out: Path, old: list[dict[str, Any]], new: list[dict[str, Any]]) -> None:
    """Remove the files of a block's speculative items that its regenerated items no longer list."""
    keep = {ln.get(k) for ln in new for k in ("file", "mask", "gate", "truth")}
    for ln in old:
        for k in ("file", "mask", "gate", "truth"):
            if ln.get(k) and ln[k] not in keep:
                listed_path(out, ln, k).unlink(missing_ok=True)


def _remove_shard_files(out: Path) -> None:
    for p in out.iterdir():
        if _SHARD_FILE.match(p.name):
            p.unlink(missing_ok=True)
    shutil.rmtree(out / SHARD_DIR, ignore_errors=True)


def merge_shards(generator: AnomalyGenerator, out: Path, cfg: GenerateConfig,
                 log: Callable[[str], None] | None = None) -> bool:
    """Merge the finished shards in ``out`` into one set (see the module docstring); False when another process
    is merging them or has already done so."""
    fd = os.open(out, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # the other shard that finished at the same moment merges
        if shard_count(out) is None:
            return False
        regenerated = _merge_locked(generator, out, cfg)
        if log:
            log(f"merged the shards into {out / MANIFEST} ({regenerated} block(s) regenerated after lower blocks)")
        return True
    finally:
        os.close(fd)


def _merge_locked(generator: AnomalyGenerator, out: Path, cfg: GenerateConfig) -> int:
    lines = merged_lines(out)
    by_block: dict[int, list[dict[str, Any]]] = {}
    for ln in lines:
        by_block.setdefault(int(ln.get("index", 0)) // cfg.chunk, []).append(ln)
    exact = callable(getattr(generator, "resume_state", None))
    line_keys = getattr(generator, "line_keys", None)
    backend = getattr(generator, "name", cfg.backend)
    final: list[dict[str, Any]] = []
    below: set[str] = set()
    regenerated = 0
    n_blocks = (cfg.n + cfg.chunk - 1) // cfg.chunk
    for b in range(n_blocks):
        mine = by_block.pop(b, [])
        if exact and b > 0 and (not callable(line_keys) or _hits(out, b, below)):
            blk = range(b * cfg.chunk, min(cfg.n, (b + 1) * cfg.chunk))
            new = [write_item(out, idx, a, backend) for idx, a in block_anomalies(generator, cfg, blk, final)]
            if not new:
                raise InputError(f"{backend} generator", f"made none of the anomalies {blk.start}..{blk.stop - 1} "
                                                         "when merging the shards")
            _drop_files(out, mine, new)
            mine, regenerated = new, regenerated + 1
        final += mine
        if exact and callable(line_keys):
            below |= line_keys(mine)
    final += [ln for b in sorted(by_block) for ln in by_block[b]]  # lines beyond n (an earlier, larger n)
    atomic_write_text(out / MANIFEST, "".join(json.dumps(ln) + "\n" for ln in final))
    _remove_shard_files(out)
    if cfg.preview:
        write_preview(out, final, cfg.preview)
    return regenerated
