"""Train the CSDA head (``comgen train RUN_DIR``) through HF Accelerate: same code on CPU, one GPU or several.

Why it is built like this:
- the backbone is frozen, so features of every (augmented) training image are cached once (``data.FeatureCache``)
  and each epoch only runs the light head;
- every per-epoch random choice (batch order, variants, reference draws) comes from a generator seeded by
  ``(seed, epoch)``, so ``--resume`` after an interruption reproduces the uninterrupted run exactly; the
  checkpoint still stores model, optimizer, epoch and the global RNG states;
- validation normals give early stopping (validation loss, with held-out generated anomalies) and the
  calibration: score normalisation and the pass/fail threshold at a normal-score quantile;
- a non-finite loss stops before the optimizer step, so the last checkpoint on disk stays the last good one.
"""

from __future__ import annotations

import json
import math
import os
import random
import resource
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from comgen.detect.config import DetectorConfig
from comgen.detect.csda import CSDAHead
from comgen.detect.data import FeatureCache, Material, ReferenceMatcher, Splits, load_splits
from comgen.detect.loss import csda_loss
from comgen.errors import ArtifactError, ComgenError, ConfigError
from comgen.io import append_jsonl, atomic_path, atomic_write_json
from comgen.rundir import RunDir

STATE = "state.pt"  # resume point: head, optimizer, epoch, early-stopping state, RNG states
BEST = "best.safetensors"  # weights predict/export use
LAST = "head.safetensors"
CALIBRATION = "calibration.json"
HISTORY = "history.jsonl"
BANK = "bank"


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


def peak_rss_mb() -> float:
    """Peak resident memory of this process (VmHWM: unlike ru_maxrss it does not inherit a parent's peak)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _save_safetensors(path: Path, state: dict[str, torch.Tensor]) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp))


def _save_torch(path: Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def _set_rng_state(st: dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    np.random.set_state(st["numpy"])
    random.setstate(st["python"])


def load_state(det_dir: Path) -> dict[str, Any]:
    path = det_dir / STATE
    if not path.is_file():
        raise ArtifactError(path, "no checkpoint to resume from; train without --resume first")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ArtifactError(path, f"corrupt checkpoint ({exc.__class__.__name__})") from None


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
    from tqdm.auto import tqdm

    disable = bool(os.environ.get("COMGEN_QUIET")) or not sys.stderr.isatty()
    return tqdm(total=total, desc=desc, disable=disable, dynamic_ncols=True, leave=False)


def build_bank(backbone: torch.nn.Module, splits: Splits, cfg: DetectorConfig, bank_dir: Path,
               reuse: bool) -> Any:
    """The detector's own reference bank of normal training images (built with the detector's backbone)."""
    from comgen.masks.memory import MemoryBank, MemoryBankConfig

    if reuse and bank_dir.exists():
        return MemoryBank.load(bank_dir, backbone)
    bank_cfg = MemoryBankConfig.from_dict({**cfg.bank, "image_size": cfg.image_size, "k": cfg.head.k},
                                          where="detector.bank")
    bank = MemoryBank.build(splits.bank_images, splits.bank_ids, backbone, bank_cfg)
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


def image_max(values: np.ndarray, group: np.ndarray | None) -> np.ndarray:
    """Per whole image, the max over its tiles (identity when not tiled)."""
    if group is None:
        return values
    out = np.full(int(group.max()) + 1, -np.inf, dtype=np.float64)
    np.maximum.at(out, group, values)
    return out


def calibrate(logits: np.ndarray, labels: np.ndarray, map_mean: float, map_std: float, quantile: float,
              group: np.ndarray | None = None) -> dict[str, Any]:
    """Score normalisation and threshold from the validation normals.

    Scores are z-scores of the normal (tile) logits; in tiled mode an image's score is its tiles' maximum, and the
    threshold is the ``quantile`` of the normal images' scores.
    """
    normal = logits[labels == 0]
    mean = float(normal.mean())
    std = float(normal.std()) if len(normal) > 1 and float(normal.std()) > 1e-6 else 1.0
    img_scores = image_max((logits - mean) / std, group)
    img_labels = image_max(labels.astype(np.float64), group)
    z = img_scores[img_labels == 0]
    cal: dict[str, Any] = {"score_mean": mean, "score_std": std,
                           "threshold": float(np.quantile(z, quantile)), "quantile": quantile,
                           "map_mean": float(map_mean), "map_std": float(max(map_std, 1e-6)),
                           "n_val_normal": int(len(z)), "n_val_anomalous": int((img_labels == 1).sum())}
    if (img_labels == 1).any() and (img_labels == 0).any():
        from sklearn.metrics import roc_auc_score

        cal["val_auroc_generated"] = float(roc_auc_score(img_labels, img_scores))
    return cal


def train_detector(run: RunDir | str | Path, cfg: DetectorConfig | None = None, resume: bool = False,
                   log: Callable[[str], None] = print, cpu: bool | None = None,
                   splits: Splits | None = None) -> TrainResult:
    """Train (or resume) the CSDA detector of ``run``; writes everything into ``run.detector``.

    ``splits`` (normally read from the run's dataset and generated set) may be given directly, e.g. by benches.
    """
    from accelerate import Accelerator

    from comgen.detect.backbone import build_backbone

    run = run if isinstance(run, RunDir) else (RunDir(run) if splits is not None else RunDir.open(run))
    det = run.detector
    state: dict[str, Any] | None = None
    if resume:
        state = load_state(det)
        saved = DetectorConfig.from_dict(state["config"], where=str(det / STATE))
        if cfg is None:
            cfg = saved
        check_same_config(saved, cfg, det / STATE)
    cfg = cfg or DetectorConfig()
    t0 = time.perf_counter()
    accel = Accelerator(cpu=bool(cpu) if cpu is not None else not torch.cuda.is_available(),
                        mixed_precision=cfg.mixed_precision)
    device = accel.device
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)

    backbone = build_backbone(cfg.backbone).to(device)
    identity = backbone.identity()
    if state is not None and state.get("backbone", {}).get("fingerprint") != identity["fingerprint"]:
        raise ArtifactError(det / STATE, "checkpoint was trained with other backbone weights "
                                         f"({state.get('backbone', {}).get('source')} vs {identity['source']})")
    splits = splits if splits is not None else load_splits(run, cfg)
    det.mkdir(parents=True, exist_ok=True)
    if not resume:
        for name in (STATE, BEST, LAST, CALIBRATION, HISTORY):
            (det / name).unlink(missing_ok=True)
    cfg.save(det / "config.yaml")
    # Rebuilt even on --resume: building is deterministic, and a reloaded bank gave last-bit float differences.
    bank = build_bank(backbone, splits, cfg, det / BANK, reuse=False)
    matcher = ReferenceMatcher(bank, cfg.head.k)

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

    torch.manual_seed(cfg.seed)  # head initialisation independent of what ran before
    head = CSDAHead(backbone.channels, cfg.head)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start, best_loss, best_epoch, bad, history = 0, math.inf, -1, 0, []
    if state is not None:
        head.load_state_dict(state["head"])
        opt.load_state_dict(state["optimizer"])
        start, best_loss, best_epoch, bad = state["epoch"], state["best_loss"], state["best_epoch"], state["bad"]
        history = list(state.get("history", []))
        _set_rng_state(state["rng"])
        log(f"resuming at epoch {start + 1}/{cfg.epochs}")
    head, opt = accel.prepare(head, opt)

    def val_aligned(fb: list[torch.Tensor], sl: np.ndarray) -> list[torch.Tensor]:
        return matcher.align(fb, val_refs[sl])

    stopped_early = state is not None and bool(state.get("stopped_early"))
    epoch = start
    for epoch in range(start, cfg.epochs):
        if stopped_early:
            break
        rng = np.random.default_rng([cfg.seed, epoch])
        r_epoch = epoch - epoch % cfg.rematch_every
        refs = torch.stack([matcher.draw(pools[v], np.random.default_rng([cfg.seed, r_epoch, 7, v]))
                            for v in range(tcache.variants)])  # V,N,k
        batches = _batches(splits.train.labels, cfg, rng)
        variants = rng.integers(0, tcache.variants, size=len(splits.train))
        nproc = accel.num_processes
        if len(batches) >= nproc:  # equal batch counts per process, or DDP would wait forever
            batches = batches[: len(batches) - len(batches) % nproc]
        mine = batches[accel.process_index::nproc]
        head.train()
        bar = _tqdm(len(mine), f"epoch {epoch + 1}/{cfg.epochs}")
        run_loss, n_seen = 0.0, 0
        for step, idx in enumerate(mine):
            var = torch.from_numpy(variants[idx])
            it = torch.from_numpy(idx)
            fb, tgt = tcache.batch(var, it, device)
            aligned = matcher.align(fb, refs[var, it])
            lab = torch.from_numpy(splits.train.labels[idx]).to(device)
            size = (cfg.image_size,) * 2 if cfg.train_full_res else tuple(fb[0].shape[-2:])
            tgt = loss_target(tgt, size, cfg.target_pool)
            with accel.autocast():
                m, g = head(fb, aligned, size)
                loss, terms = csda_loss(m.float(), g.float(), tgt, lab, cfg.loss)
            if not torch.isfinite(loss):
                bar.close()
                kept = det / STATE if (det / STATE).exists() else None
                raise NonFiniteLossError(det, f"loss became {float(loss.detach())} at epoch {epoch + 1} "
                                              f"step {step + 1} "
                                              f"(terms {terms}); stopped, last good checkpoint "
                                              f"{'kept at ' + str(kept) if kept else 'none yet'}; try a lower --lr")
            opt.zero_grad(set_to_none=True)
            accel.backward(loss)
            opt.step()
            run_loss += float(loss.detach()) * len(idx)
            n_seen += len(idx)
            bar.set_postfix(loss=f"{run_loss / n_seen:.4f}")
            bar.update(1)
        bar.close()
        val = evaluate_head(accel.unwrap_model(head), vfeats, val_aligned, splits.val, cfg, device)
        rec = {"epoch": epoch + 1, "train_loss": run_loss / max(n_seen, 1), "val_loss": val["loss"],
               "seconds": round(time.perf_counter() - t0, 2)}
        history.append(rec)
        improved = val["loss"] < best_loss - 1e-6
        if improved:
            best_loss, best_epoch, bad = val["loss"], epoch + 1, 0
        else:
            bad += 1
        stopped_early = bad >= cfg.patience
        if accel.is_main_process:
            hstate = accel.unwrap_model(head).state_dict()
            _save_safetensors(det / LAST, hstate)
            if improved:
                _save_safetensors(det / BEST, hstate)
            _save_torch(det / STATE, {"config": cfg.to_dict(), "epoch": epoch + 1, "head": hstate,
                                      "optimizer": opt.state_dict(), "best_loss": best_loss,
                                      "best_epoch": best_epoch, "bad": bad, "history": history,
                                      "stopped_early": stopped_early, "rng": _rng_state(), "backbone": identity})
            append_jsonl(det / HISTORY, rec)
        log(f"epoch {epoch + 1}/{cfg.epochs}: train loss {rec['train_loss']:.4f}, val loss {val['loss']:.4f}"
            + (" (best)" if improved else ""))
        if stopped_early:
            log(f"early stop: no validation improvement for {cfg.patience} epochs")
            break
    accel.wait_for_everyone()

    if not (det / BEST).exists():
        raise ArtifactError(det / BEST, "no checkpoint was written (zero epochs?)")
    best_head = CSDAHead(backbone.channels, cfg.head).to(device)
    best_head.load_state_dict(load_file(str(det / BEST)))
    val = evaluate_head(best_head, vfeats, val_aligned, splits.val, cfg, device, with_maps=True)
    cal = calibrate(val["logits"], splits.val.labels, val.get("map_mean", 0.0), val.get("map_std", 1.0),
                    cfg.threshold_quantile, splits.val.group if cfg.tiles > 1 else None)
    cal.update({"best_epoch": best_epoch, "best_val_loss": best_loss, "backbone": identity,
                "network": cfg.network_dict()})
    cal["prior"] = attach_prior(run, splits, cfg, cal, val["logits"], log) if accel.is_main_process else None
    if accel.is_main_process:
        atomic_write_json(det / CALIBRATION, cal)
    seconds = time.perf_counter() - t0
    return TrainResult(len(history), best_epoch, best_loss, stopped_early, seconds, peak_rss_mb(), cal, history)


def attach_prior(run: RunDir, splits: Splits, cfg: DetectorConfig, cal: dict[str, Any], val_logits: np.ndarray,
                 log: Callable[[str], None]) -> dict[str, Any]:
    """Fit the composition prior (``composition_prior.py``) and re-derive the threshold on the fused scores.

    Returns the calibration's ``prior`` entry; updates ``cal`` in place (threshold, validation AUROC).
    """
    from comgen.detect.composition_prior import PRIOR_DIR, CompositionPrior, fuse_scores

    out = run.detector / PRIOR_DIR
    why = None
    if not cfg.prior.enabled:
        why = "disabled in the config"
    elif cfg.tiles > 1:
        why = "tiled mode scores tiles, not whole compositions"
    elif not (run.components / "model.json").is_file():
        why = "the run has no component model (`comgen learn`)"
    if why is not None:
        if out.exists():
            shutil.rmtree(out)
        log(f"composition prior off: {why}")
        return {"enabled": False, "reason": why}
    from comgen.components.model import ComponentModel

    model = ComponentModel.load(run.components)
    labels = splits.val.labels
    log("fitting the composition prior on the training normals")
    prior = CompositionPrior.fit(model, splits.bank_images, cfg=cfg.prior)
    nll = prior.nll(splits.val.images)  # segmented once: normals calibrate, anomalies give the validation AUROC
    prior.calibrate(nll[labels == 0])
    z_prior = prior.z(nll)
    z_net = (val_logits - cal["score_mean"]) / cal["score_std"]
    fused = fuse_scores(z_net, z_prior, cfg.prior.fuse)
    cal["threshold_network"] = cal["threshold"]
    cal["threshold"] = float(np.quantile(fused[labels == 0], cfg.threshold_quantile))
    entry: dict[str, Any] = {"enabled": True, "fuse": cfg.prior.fuse, "nll_mean": prior.mean, "nll_std": prior.std}
    if (labels == 1).any() and (labels == 0).any():
        from sklearn.metrics import roc_auc_score

        entry["val_auroc_generated_prior"] = float(roc_auc_score(labels, z_prior))
        cal["val_auroc_generated_network"] = cal.get("val_auroc_generated")
        cal["val_auroc_generated"] = float(roc_auc_score(labels, fused))
    prior.save(out)
    return entry


def read_calibration(det_dir: Path) -> dict[str, Any]:
    path = det_dir / CALIBRATION
    if not path.is_file():
        raise ArtifactError(det_dir, "no trained detector here (calibration.json missing); run `comgen train`")
    return json.loads(path.read_text())
