"""Train the CSDA head (``comgen train RUN_DIR``) through HF Accelerate: same code on CPU, one GPU or several.

Why it is built like this:
- the backbone is frozen, so features of every (augmented) training image are cached once (``data.FeatureCache``)
  and each epoch only runs the light head;
- every per-epoch random choice (batch order, variants, reference draws) comes from a generator seeded by
  ``(seed, epoch)``, so ``--resume`` after an interruption reproduces the uninterrupted run exactly; the
  checkpoint still stores model, optimizer, epoch and the global RNG states;
- validation normals give early stopping (validation loss, with held-out generated anomalies) and the
  calibration: score normalisation and the pass/fail threshold at a normal-score quantile;
- a non-finite loss stops before the optimizer step, so the last checkpoint on disk stays the last good one;
- a new training writes nothing into the detector folder before its first checkpoint, so one that fails early (a bad
  option, missing data, a NaN loss) leaves the previous detector whole.
"""

from __future__ import annotations

import math
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from safetensors.torch import load_file
from tqdm.auto import tqdm

from comgen.detect.artifacts import (
    BANK,
    BEST,
    CALIBRATION,
    HISTORY,
    LAST,
    LEGACY_STATE,
    STATE,
    STATE_TENSORS,
    load_state,
    save_safetensors,
    save_state,
)
from comgen.detect.calibration import (
    attach_composition,
    attach_global,
    attach_memory,
    attach_prior,
    calibrate,
    fuse_branches,
    image_max,
)
from comgen.detect.config import DetectorConfig
from comgen.detect.csda import CSDAHead
from comgen.detect.data import FeatureCache, Material, ReferenceMatcher, Splits, load_splits
from comgen.detect.loss import csda_loss
from comgen.detect.predict import Detector
from comgen.detect.tiling import is_tiled, prior_inputs
from comgen.errors import ArtifactError, ComgenError, ConfigError
from comgen.evaluate.map_score import peak_stats
from comgen.features.backbone import Backbone, build_backbone
from comgen.features.memory import MemoryBank, MemoryBankConfig
from comgen.io import append_jsonl, atomic_write_json
from comgen.rundir import RunDir
from comgen.runtime import is_main_process, peak_rss_mb


def _silent(_: str) -> None:
    """The log of the processes other than the main one."""


class NonFiniteLossError(ComgenError):
    """Training produced a NaN/inf loss; the last good checkpoint is kept."""


@dataclass
class TrainResult:
    epochs_run: int
    best_epoch: int
    best_val_loss: float
    stopped_early: bool
    seconds: float
    peak_rss_mb: float
    calibration: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def _set_rng_state(st: dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    np.random.set_state(st["numpy"])
    random.setstate(st["python"])


def check_same_config(saved: DetectorConfig, cfg: DetectorConfig, where: Path) -> None:
    a, b = saved.resume_dict(), cfg.resume_dict()
    if a != b:
        diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        raise ConfigError(where, f"checkpoint was trained with another config (differs in: {', '.join(diff)}); "
                                 f"train without --resume or use the saved config")


def _batches(labels: np.ndarray, cfg: DetectorConfig, rng: np.random.Generator) -> list[np.ndarray]:
    """Every normal once per epoch; each batch gets round(batch_size * anomaly_ratio) anomalies."""
    normals = rng.permutation(np.nonzero(labels == 0)[0])
    anomalies = np.nonzero(labels == 1)[0]
    n_anom = int(round(cfg.batch_size * cfg.anomaly_ratio)) if len(anomalies) else 0
    n_norm = max(1, cfg.batch_size - n_anom)
    n_batches = max(1, math.ceil(len(normals) / n_norm))
    need = n_batches * n_anom
    stream = (np.concatenate([rng.permutation(anomalies) for _ in range(math.ceil(need / len(anomalies)))])
              if need else np.zeros(0, int))
    out = []
    for b in range(n_batches):
        idx = np.concatenate([normals[b * n_norm:(b + 1) * n_norm], stream[b * n_anom:(b + 1) * n_anom]])
        out.append(rng.permutation(idx))
    return out


def _tqdm(total: int, desc: str) -> Any:
    disable = bool(os.environ.get("COMGEN_QUIET")) or not sys.stderr.isatty()
    return tqdm(total=total, desc=desc, disable=disable, dynamic_ncols=True, leave=False)


def build_bank(backbone: torch.nn.Module, splits: Splits, cfg: DetectorConfig, bank_dir: Path | None,
               reuse: bool) -> Any:
    """The detector's own reference bank of normal training images (built with the detector's backbone); saved to
    ``bank_dir`` unless that is None (training saves it once setup has succeeded)."""
    if reuse and bank_dir is not None and bank_dir.exists():
        return MemoryBank.load(bank_dir, backbone)
    bank_cfg = MemoryBankConfig.from_dict({**cfg.bank, "image_size": cfg.image_size, "k": cfg.head.k},
                                          where="detector.bank")
    bank = MemoryBank.build(splits.bank_images, splits.bank_ids, backbone, bank_cfg)
    if bank_dir is not None:
        bank.save(bank_dir)
    return bank


def loss_target(target: torch.Tensor, size: tuple[int, ...], pool: str = "avg") -> torch.Tensor:
    """Pixel target at the loss resolution when smaller than the working size: area-averaged (soft) or max."""
    if tuple(target.shape[-2:]) == tuple(size):
        return target
    if pool == "max":
        return torch.nn.functional.adaptive_max_pool2d(target, size)
    return torch.nn.functional.adaptive_avg_pool2d(target, size)


@torch.no_grad()
def evaluate_head(head: torch.nn.Module, feats: list[torch.Tensor], aligned_fn: Callable[[list[torch.Tensor],
                  np.ndarray], list[torch.Tensor]], mat: Material, cfg: DetectorConfig, device: Any,
                  with_maps: bool = False) -> dict[str, Any]:
    """Validation pass: mean loss, image logits, and (optionally) map logit statistics of the normals."""
    head.eval()
    s = cfg.image_size
    losses, logits, weights = [], [], []
    pix_sum = pix_sq = 0.0
    pix_n = 0
    for i in range(0, len(mat), cfg.batch_size):
        sl = np.arange(i, min(i + cfg.batch_size, len(mat)))
        fb = [f[sl].to(device, torch.float32) for f in feats]
        aligned = aligned_fn(fb, sl)
        size = (s, s) if with_maps or cfg.train_full_res else tuple(fb[0].shape[-2:])
        m, g = head(fb, aligned, size)
        tgt = loss_target(torch.from_numpy(mat.targets[sl]).unsqueeze(1).to(device), size, cfg.target_pool)
        lab = torch.from_numpy(mat.labels[sl]).to(device)
        loss, _ = csda_loss(m, g, tgt, lab, cfg.loss)
        losses.append(float(loss))
        weights.append(len(sl))
        logits.append(g.float().cpu())
        if with_maps:
            normal = lab == 0
            if bool(normal.any()):
                mm = m[normal].double()
                pix_sum += float(mm.sum())
                pix_sq += float((mm * mm).sum())
                pix_n += mm.numel()
    out: dict[str, Any] = {"loss": float(np.average(losses, weights=weights)),
                           "logits": torch.cat(logits).numpy()}
    if with_maps and pix_n:
        mean = pix_sum / pix_n
        out["map_mean"] = mean
        out["map_std"] = math.sqrt(max(pix_sq / pix_n - mean * mean, 0.0))
    return out


@dataclass
class _Training:
    """What one training run holds between epochs."""

    det: Path
    cfg: DetectorConfig
    accel: Accelerator
    backbone: Backbone
    identity: dict[str, Any]
    splits: Splits
    bank: MemoryBank
    matcher: ReferenceMatcher
    tcache: FeatureCache
    vfeats: list[torch.Tensor]
    val_refs: torch.Tensor
    pools: torch.Tensor
    head: torch.nn.Module
    opt: torch.optim.Optimizer
    t0: float
    start: int = 0
    best_loss: float = math.inf
    best_epoch: int = -1
    bad: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False
    fresh: bool = True  # a new training, not a resume: the folder's previous detector is replaced
    written: bool = False  # whether this training has written into the detector folder yet

    def val_aligned(self, fb: list[torch.Tensor], sl: np.ndarray) -> list[torch.Tensor]:
        return self.matcher.align(fb, self.val_refs[sl])


def _resume_point(det: Path, cfg: DetectorConfig | None, resume: bool) -> tuple[dict[str, Any] | None, DetectorConfig]:
    """The checkpoint to resume from (None for a fresh start) and the config to train with."""
    if not resume:
        return None, cfg or DetectorConfig()
    state = load_state(det)
    saved = DetectorConfig.from_dict(state["config"], where=str(det / STATE))
    cfg = cfg or saved
    check_same_config(saved, cfg, det / STATE)
    return state, cfg


def _setup(run: RunDir, cfg: DetectorConfig, state: dict[str, Any] | None, cpu: bool | None,
           splits: Splits | None, log: Callable[[str], None]) -> _Training:
    """Backbone, bank, feature caches, reference pools, head and optimizer; restored from ``state`` on resume."""
    det = run.detector
    t0 = time.perf_counter()
    accel = Accelerator(cpu=bool(cpu) if cpu is not None else not torch.cuda.is_available(),
                        mixed_precision=cfg.mixed_precision)
    device = accel.device
    if accel.num_processes > 1:
        log(f"training on {accel.num_processes} processes ({device.type}); each takes its part of every batch")
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    backbone = build_backbone(cfg.backbone).to(device)
    identity = backbone.identity()
    if state is not None and state.get("backbone", {}).get("fingerprint") != identity["fingerprint"]:
        raise ArtifactError(det / STATE, "checkpoint was trained with other backbone weights "
                                         f"({state.get('backbone', {}).get('source')} vs {identity['source']})")
    splits = splits if splits is not None else load_splits(run, cfg)
    # Rebuilt even on --resume: building is deterministic, and a reloaded bank gave last-bit float differences.
    # Kept in memory until the first checkpoint: nothing in the folder changes before training has run an epoch.
    bank = build_bank(backbone, splits, cfg, None, reuse=False)
    matcher = ReferenceMatcher(bank, cfg.head.k)
    tcache, vfeats, val_refs, pools = _caches(backbone, splits, cfg, bank, matcher, device, log)
    torch.manual_seed(cfg.seed)  # head initialisation independent of what ran before
    head = CSDAHead(backbone.channels, cfg.head)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    tr = _Training(det, cfg, accel, backbone, identity, splits, bank, matcher, tcache, vfeats, val_refs, pools, head,
                   opt, t0, fresh=state is None)
    if state is not None:
        head.load_state_dict(state["head"])
        opt.load_state_dict(state["optimizer"])
        tr.start, tr.best_loss, tr.best_epoch, tr.bad = state["epoch"], state["best_loss"], state["best_epoch"], state["bad"]
        tr.history = list(state.get("history", []))
        tr.stopped_early = bool(state.get("stopped_early"))
        _set_rng_state(state["rng"])
        log(f"resuming at epoch {tr.start + 1}/{cfg.epochs}")
    tr.head, tr.opt = accel.prepare(head, opt)
    return tr


def _caches(backbone: Backbone, splits: Splits, cfg: DetectorConfig, bank: MemoryBank, matcher: ReferenceMatcher,
            device: Any, log: Callable[[str], None]):
    """Frozen features of the training and validation images, the validation references and the training pools."""
    cdtype = torch.float16 if cfg.cache_dtype == "float16" else torch.float32
    log(f"caching backbone features of {len(splits.train)} training and {len(splits.val)} validation images")
    tcache = FeatureCache.build(backbone, splits.train, cfg.augment_variants, cfg.augment_strength, cfg.seed,
                                cfg.batch_size, device, cdtype)
    vcache = FeatureCache.build(backbone, splits.val, 0, 0.0, cfg.seed, cfg.batch_size, device, cdtype)
    vfeats = [f[0] for f in vcache.feats]
    val_refs = matcher.nearest(vfeats, cfg.head.k, splits.val.exclude)
    pool = min(cfg.ref_pool, len(bank) - 1)
    if pool < cfg.head.k:
        raise ConfigError("detector.head.k", f"needs {cfg.head.k} references but the bank has only {len(bank)} "
                                             "images (one is always excluded); lower head.k or add images")
    pools = torch.stack([matcher.nearest([f[v] for f in tcache.feats], pool, splits.train.exclude)
                         for v in range(tcache.variants)])  # V,N,pool (fixed: features are frozen)
    return tcache, vfeats, val_refs, pools


def _train_epoch(tr: _Training, epoch: int) -> tuple[float, int]:
    """One pass over this process's batches; returns (summed loss, images seen)."""
    cfg, accel, device, splits = tr.cfg, tr.accel, tr.accel.device, tr.splits
    rng = np.random.default_rng([cfg.seed, epoch])
    r_epoch = epoch - epoch % cfg.rematch_every
    refs = torch.stack([tr.matcher.draw(tr.pools[v], np.random.default_rng([cfg.seed, r_epoch, 7, v]))
                        for v in range(tr.tcache.variants)])  # V,N,k
    batches = _batches(splits.train.labels, cfg, rng)
    variants = rng.integers(0, tr.tcache.variants, size=len(splits.train))
    mine = [_share(idx, accel.process_index, accel.num_processes) for idx in batches]
    tr.head.train()
    bar = _tqdm(len(mine), f"epoch {epoch + 1}/{cfg.epochs}")
    run_loss, n_seen = 0.0, 0
    for step, idx in enumerate(mine):
        var = torch.from_numpy(variants[idx])
        it = torch.from_numpy(idx)
        fb, tgt = tr.tcache.batch(var, it, device)
        aligned = tr.matcher.align(fb, refs[var, it])
        lab = torch.from_numpy(splits.train.labels[idx]).to(device)
        size = (cfg.image_size,) * 2 if cfg.train_full_res else tuple(fb[0].shape[-2:])
        tgt = loss_target(tgt, size, cfg.target_pool)
        with accel.autocast():
            m, g = tr.head(fb, aligned, size)
            loss, terms = csda_loss(m.float(), g.float(), tgt, lab, cfg.loss)
        if not _all_finite(accel, loss):
            bar.close()
            raise NonFiniteLossError(tr.det, f"loss became {float(loss.detach())} at epoch {epoch + 1} "
                                             f"step {step + 1} (terms {terms}); stopped, {_kept(tr)}; try a lower --lr")
        tr.opt.zero_grad(set_to_none=True)
        accel.backward(loss)
        tr.opt.step()
        run_loss += float(loss.detach()) * len(idx)
        n_seen += len(idx)
        bar.set_postfix(loss=f"{run_loss / n_seen:.4f}")
        bar.update(1)
    bar.close()
    if accel.num_processes > 1:  # the epoch's loss over every process's share, as one process would log it
        tot = accel.reduce(torch.tensor([run_loss, float(n_seen)], dtype=torch.float64, device=device), "sum")
        run_loss, n_seen = float(tot[0]), int(tot[1])
    return run_loss, n_seen


def _share(idx: np.ndarray, rank: int, nproc: int) -> np.ndarray:
    """This process's part of one global batch.

    Why every process takes a part of every batch (not whole batches in turn): all processes then make the same
    number of optimizer steps, so none waits forever in the gradient all-reduce, and the averaged gradient of the
    parts approximates the one-process gradient of the whole batch (same step count and batch size as one process).
    A batch smaller than the process count gives some processes a repeated item rather than nothing.
    """
    part = idx[rank::nproc]
    return part if len(part) else idx[rank % len(idx):][:1]


def _all_finite(accel: Accelerator, loss: torch.Tensor) -> bool:
    """Whether the loss is finite on every process (all stop together, none is left waiting in backward)."""
    bad = (~torch.isfinite(loss.detach())).float().reshape(1)
    if accel.num_processes > 1:
        bad = accel.reduce(bad, "sum")
    return not bool(bad.item())


def _kept(tr: _Training) -> str:
    """What a stopped training leaves behind, for its error message."""
    if not tr.written:
        return f"the detector files in {tr.det} are untouched"
    return f"last good checkpoint kept at {tr.det / STATE}" if (tr.det / STATE).exists() else "no checkpoint yet"


def _start_writing(tr: _Training) -> None:
    """The first write of this training into the detector folder (main process only).

    Why here and not in setup: a training that fails before its first checkpoint (a bad option, no data, a NaN
    loss, Ctrl-C) must leave the previous detector whole; from here on the folder holds the new one.
    """
    if tr.written:
        return
    tr.det.mkdir(parents=True, exist_ok=True)
    if tr.fresh:
        for name in (STATE, STATE_TENSORS, LEGACY_STATE, BEST, LAST, CALIBRATION, HISTORY):
            (tr.det / name).unlink(missing_ok=True)
    tr.cfg.save(tr.det / "config.yaml")
    tr.bank.save(tr.det / BANK)
    tr.written = True


def _checkpoint(tr: _Training, epoch: int, rec: dict[str, Any], improved: bool) -> None:
    """Last and best weights, the resume state and the history line (main process only)."""
    if not tr.accel.is_main_process:
        return
    _start_writing(tr)
    hstate = tr.accel.unwrap_model(tr.head).state_dict()
    save_safetensors(tr.det / LAST, hstate)
    if improved:
        save_safetensors(tr.det / BEST, hstate)
    save_state(tr.det, {"config": tr.cfg.to_dict(), "epoch": epoch + 1, "head": hstate,
                        "optimizer": tr.opt.state_dict(), "best_loss": tr.best_loss,
                        "best_epoch": tr.best_epoch, "bad": tr.bad, "history": tr.history,
                        "stopped_early": tr.stopped_early, "rng": _rng_state(), "backbone": tr.identity})
    append_jsonl(tr.det / HISTORY, rec)


def _epoch(tr: _Training, epoch: int, log: Callable[[str], None]) -> None:
    """Train one epoch, validate, update early stopping and write the checkpoint."""
    cfg = tr.cfg
    run_loss, n_seen = _train_epoch(tr, epoch)
    val = evaluate_head(tr.accel.unwrap_model(tr.head), tr.vfeats, tr.val_aligned, tr.splits.val, cfg, tr.accel.device)
    val["loss"] = _from_main(tr.accel, val["loss"])  # early stopping decided once, identically on every process
    rec = {"epoch": epoch + 1, "train_loss": run_loss / max(n_seen, 1), "val_loss": val["loss"],
           "seconds": round(time.perf_counter() - tr.t0, 2)}
    tr.history.append(rec)
    improved = val["loss"] < tr.best_loss - 1e-6
    if improved:
        tr.best_loss, tr.best_epoch, tr.bad = val["loss"], epoch + 1, 0
    else:
        tr.bad += 1
    tr.stopped_early = tr.bad >= cfg.patience
    _checkpoint(tr, epoch, rec, improved)
    log(f"epoch {epoch + 1}/{cfg.epochs}: train loss {rec['train_loss']:.4f}, val loss {val['loss']:.4f}"
        + (" (best)" if improved else ""))
    if tr.stopped_early:
        log(f"early stop: no validation improvement for {cfg.patience} epochs")


def _from_main(accel: Accelerator, value: Any) -> Any:
    """The main process's ``value`` on every process (itself when there is only one)."""
    if accel.num_processes == 1:
        return value
    box = [value]
    broadcast_object_list(box, from_process=0)
    return box[0]


def _calibrate_best(tr: _Training, run: RunDir, log: Callable[[str], None]) -> dict[str, Any]:
    """Calibration of the best checkpoint on the validation split (and the composition prior); written to disk."""
    det, cfg, device = tr.det, tr.cfg, tr.accel.device
    if tr.accel.is_main_process:
        _start_writing(tr)  # a resume with no epoch left still saves its config and bank
    if not (det / BEST).exists():
        raise ArtifactError(det / BEST, "no checkpoint was written (zero epochs?)")
    best_head = CSDAHead(tr.backbone.channels, cfg.head).to(device)
    best_head.load_state_dict(load_file(str(det / BEST)))
    val = evaluate_head(best_head, tr.vfeats, tr.val_aligned, tr.splits.val, cfg, device, with_maps=True)
    group = tr.splits.val.group if is_tiled(cfg) else None
    cal = calibrate(val["logits"], tr.splits.val.labels, val.get("map_mean", 0.0), val.get("map_std", 1.0),
                    cfg.threshold_quantile, group)
    cal.update({"best_epoch": tr.best_epoch, "best_val_loss": tr.best_loss, "backbone": tr.identity,
                "network": cfg.network_dict()})
    if not tr.accel.is_main_process:
        return cal
    labels = image_max(tr.splits.val.labels.astype(np.float64), group)
    z = {"network": image_max((val["logits"] - cal["score_mean"]) / cal["score_std"], group)}
    cal["prior"], z_prior, z_counts, segmented = attach_prior(run, tr.splits, cfg, log)
    cal["composition"], z_comp = attach_composition(det, segmented, tr.splits, cfg, log)
    cal["memory"], z_memory = attach_memory(det, tr.bank.patches, tr.vfeats, tr.splits.val.labels, cfg, log)
    cal["global"], z_global = attach_global(det, tr.bank.patches, tr.vfeats, tr.splits.val.labels, cfg, log)
    for name, scores in (("prior", z_prior), ("composition", z_comp), ("memory", z_memory), ("global", z_global),
                         ("counts", z_counts)):
        if scores is not None:
            z[name] = scores
    fuse_branches(cal, z, labels, cfg)
    log(f"fusion: {cal['fusion']['name']}")
    atomic_write_json(det / CALIBRATION, cal)
    peak = _map_peak(tr, device)
    if peak is not None:
        cal["map_peak"] = peak
        atomic_write_json(det / CALIBRATION, cal)
    return cal


def _map_peak(tr: _Training, device: Any) -> dict[str, float] | None:
    """The validation normals' fused scores and map maxima (``evaluate/map_score.py``), from the detector just
    written, predicted exactly as at test time (tiled mode: the whole images at the working size)."""
    _, images, labels = prior_inputs(tr.splits, tr.cfg)
    normals = images[np.asarray(labels) == 0]
    if not len(normals):
        return None
    detector = Detector.load(tr.det, device=str(device))
    detector.cfg = detector.cfg.replace(map_carries_score=False)
    scores, maps = detector.predict(list(normals), notice=None)
    return peak_stats(scores, maps)


def train_detector(run: RunDir | str | Path, cfg: DetectorConfig | None = None, resume: bool = False,
                   log: Callable[[str], None] = print, cpu: bool | None = None,
                   splits: Splits | None = None) -> TrainResult:
    """Train (or resume) the CSDA detector of ``run``; writes everything into ``run.detector``.

    ``splits`` (normally read from the run's dataset and generated set) may be given directly, e.g. by benches.
    """
    run = run if isinstance(run, RunDir) else (RunDir(run) if splits is not None else RunDir.open(run))
    if not is_main_process():  # one process speaks for all (each would print the same lines)
        log = _silent
    state, cfg = _resume_point(run.detector, cfg, resume)
    tr = _setup(run, cfg, state, cpu, splits, log)
    for epoch in range(tr.start, cfg.epochs):
        if tr.stopped_early:
            break
        _epoch(tr, epoch, log)
    tr.accel.wait_for_everyone()  # the main process's last checkpoint is on disk before calibration reads it
    # Calibration reads BEST from disk and writes the detector's files, so only the main process runs it.
    cal = _from_main(tr.accel, _calibrate_best(tr, run, log) if tr.accel.is_main_process else None)
    if tr.accel.num_processes > 1:
        tr.accel.end_training()  # releases the process group so every process exits cleanly
    return TrainResult(len(tr.history), tr.best_epoch, tr.best_loss, tr.stopped_early,
                       time.perf_counter() - tr.t0, peak_rss_mb(), cal, tr.history)
