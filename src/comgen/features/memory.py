"""Reference Neighbor Association (RNA): a memory bank of frozen-backbone features of normal training images.

Why: a logical anomaly is only visible against what a *normal* image of the same layout looks like. For a query
the bank retrieves the top-k most similar normal images (faiss over pooled global descriptors that keep a coarse
layout grid), then aligns every query patch to its nearest patch of those references inside a small local window,
so normal jitter in position is absorbed while a missing, extra, moved or recoloured component is not.
Stage II turns the aligned residuals into masks; Stage III feeds the aligned references to the detector.

On disk (``RunDir.bank``): ``bank.json`` (ids, backbone identity, config, checksums, normal statistics; written
last, so its presence means the bank is complete), ``patches.safetensors``, ``global.faiss``, ``config.yaml``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
from collections.abc import Collection, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import faiss
import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from comgen.compiled import eager, maybe_compiled, runs_compiled
from comgen.config import ConfigBase
from comgen.data.imageio import resize_rgb
from comgen.errors import ArtifactError, ConfigError, InputError
from comgen.features.backbone import to_tensor
from comgen.features.coreset import greedy_k_center
from comgen.io import atomic_path, atomic_write_json
from comgen.progress import progress

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
INDEX_KINDS = ("flat", "sq8", "ivfpq")


@dataclass
class MemoryBankConfig(ConfigBase):
    """How the bank is built and queried.

    ``window`` is the alignment radius in patches (per scale); ``global_grid`` the pooling grid of the global
    descriptor (>1 keeps a coarse layout, so retrieval prefers images with the same arrangement); ``index`` the
    faiss index (``flat`` exact; ``sq8`` / ``ivfpq`` compressed); ``coreset`` the fraction of images kept by greedy
    k-center (1.0 = all); ``feature_dtype`` the storage type of patch features.
    """

    image_size: int = 256
    k: int = 3
    window: int = 1
    global_grid: int = 4
    global_layer: int = 1  # which backbone scale is pooled (1 = middle: layout + colour, 640-d for Lite0)
    global_dim: int = 640  # longer descriptors are randomly projected to this size (0 = never)
    index: str = "flat"
    nlist: int = 0  # IVF lists; 0 = about sqrt(N)
    pq_m: int = 16
    nprobe: int = 8
    coreset: float = 1.0
    feature_dtype: str = "float16"
    batch_size: int = 16
    seed: int = 0
    color_stride: int = 2  # stride of the stored Lab colour scale (sharp residual boundaries); 0 = none
    color_window: int = 1

    def __post_init__(self) -> None:
        if self.index not in INDEX_KINDS:
            raise ConfigError("bank.index", f"{self.index!r} is not one of {list(INDEX_KINDS)}")
        if self.feature_dtype not in ("float16", "float32"):
            raise ConfigError("bank.feature_dtype", f"{self.feature_dtype!r} is not float16 or float32")
        if not 0.0 < self.coreset <= 1.0:
            raise ConfigError("bank.coreset", f"must be in (0, 1], got {self.coreset}")
        if self.k < 1 or self.window < 0 or self.global_grid < 1 or self.image_size < 8:
            raise ConfigError("bank", "k >= 1, window >= 0, global_grid >= 1 and image_size >= 8 are required")
        if self.color_stride < 0 or self.color_window < 0 or (
                self.color_stride and self.image_size % self.color_stride):
            raise ConfigError("bank.color_stride", f"must be >= 0 and divide image_size {self.image_size}")


# --------------------------------------------------------------------------------------------------------------
# pure helpers (shared with Stage III)
# --------------------------------------------------------------------------------------------------------------
def global_descriptors(feats: Sequence[torch.Tensor], grid: int, layer: int = -1, dim: int = 0,
                       seed: int = 0) -> torch.Tensor:
    """[B, D] float32 L2-normalised descriptor: one scale pooled to a grid (keeps a coarse layout), per-cell
    normalised; projected to ``dim`` dims by a fixed random (Johnson-Lindenstrauss) matrix when it is longer, so
    wide backbones keep retrieval fast."""
    if not -len(feats) <= layer < len(feats):
        raise ConfigError("bank.global_layer", f"{layer} is not one of the {len(feats)} feature scales")
    f = feats[layer].float()
    pooled = F.normalize(F.adaptive_avg_pool2d(f, grid), dim=1).flatten(1)
    if dim and pooled.shape[1] > dim:
        pooled = pooled @ _projection(pooled.shape[1], dim, seed).to(pooled.device)
    return F.normalize(pooled, dim=1)


@functools.lru_cache(maxsize=8)
def _projection(d_in: int, d_out: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(d_in, d_out, generator=g) / d_out ** 0.5


def lab_features(images: np.ndarray, stride: int) -> torch.Tensor:
    """CIE Lab colour of NxHxWx3 uint8 RGB images, average-pooled by ``stride``: float32 [N,3,H/s,W/s].

    L in 0..100, a/b centred on 0, so a Euclidean distance of ~2.3 is one "just noticeable difference".
    """
    arr = np.asarray(images)
    lab = np.stack([cv2.cvtColor(np.ascontiguousarray(im), cv2.COLOR_RGB2LAB) for im in arr]).astype(np.float32)
    t = torch.from_numpy(lab).permute(0, 3, 1, 2).contiguous()
    t[:, 0] *= 100.0 / 255.0
    t[:, 1:] -= 128.0
    return F.avg_pool2d(t, stride) if stride > 1 else t


def window_offsets(window: int) -> list[tuple[int, int]]:
    """The (dy, dx) offsets of a ``±window`` search, centre first so that ties keep the un-shifted patch."""
    return [(0, 0)] + [(dy, dx) for dy in range(-window, window + 1) for dx in range(-window, window + 1)
                       if (dy, dx) != (0, 0)]


@maybe_compiled
def _best_offsets(q: torch.Tensor, raw_pad: torch.Tensor, sq_pad: torch.Tensor, window: int,
                  cosine: bool) -> torch.Tensor:
    """Index into ``window_offsets`` of the best reference offset per patch: q [B,1,C,h,w], padded references
    [B,k,C,h+2w,w+2w] (any float dtype) and their squared norms [B,k,h+2w,w+2w] -> long [B,k,h,w].

    Per query patch the argmax over offsets ignores the query's own norm, so cosine needs neither a normalised
    query nor normalised references: q.r / |r| ranks the offsets alike. For l2, argmin |q-r|^2 = argmax
    2 q.r - |r|^2. Written functionally, as a running maximum, so that ``torch.compile`` fuses the dtype
    conversion and the search into one pass (compiling the padding or the gather too made it slower, measured);
    eager it costs one product and one channel sum per offset.
    """
    h, w = q.shape[-2:]
    weight = sq_pad.clamp_min(1e-24).rsqrt() if cosine else None
    best_sim = best_off = None
    for o, (dy, dx) in enumerate(window_offsets(window)):
        ys, xs = window + dy, window + dx
        dot = (q * raw_pad[..., ys:ys + h, xs:xs + w]).sum(2)
        sim = dot * weight[..., ys:ys + h, xs:xs + w] if weight is not None else \
            2.0 * dot - sq_pad[..., ys:ys + h, xs:xs + w]
        if best_sim is None or best_off is None:
            best_sim, best_off = sim, torch.zeros_like(sim, dtype=torch.long)
            continue
        best_off = torch.where(sim > best_sim, o, best_off)  # strictly better only: ties keep the earlier offset
        best_sim = torch.maximum(best_sim, sim)
    assert best_off is not None
    return best_off


def align_features(query: torch.Tensor, refs: torch.Tensor, window: int, metric: str = "cosine",
                   ref_sq: torch.Tensor | None = None) -> torch.Tensor:
    """For every query patch, the reference feature (per reference) nearest to it within ``±window`` patches.

    query [B,C,h,w], refs [B,k,C,h,w] -> [B,k,C,h,w]. Nearest = smallest cosine distance (``metric="l2"``: smallest
    Euclidean distance, for colours). ``ref_sq`` [B,k,h,w], the squared norms of ``refs`` if the caller has them
    cached, saves one pass over the references. Loops only over the (2w+1)^2 window offsets; each step is
    vectorised over all patches, references and images.
    """
    if query.ndim != 4 or refs.ndim != 5 or refs.shape[0] != query.shape[0] or refs.shape[2:] != query.shape[1:]:
        raise InputError("align", f"query {tuple(query.shape)} and references {tuple(refs.shape)} do not match")
    B, k, C, h, w = refs.shape
    refs = refs.to(device=query.device)
    if window == 0:
        return refs.to(dtype=query.dtype, copy=True)
    if metric not in ("cosine", "l2"):
        raise InputError("align", f"unknown metric {metric!r}")
    # float16 references (as the bank stores them) are padded and searched as they are, and only the aligned
    # output is converted: no float32 copy of all k padded references
    pad = (window, window, window, window)
    raw_pad = F.pad(refs.reshape(B * k, C, h, w), pad, mode="replicate").view(B, k, C, h + 2 * window, -1)
    sq = ref_sq.to(query.device) if ref_sq is not None else refs.float().pow(2).sum(2)
    return align_padded(query, raw_pad, F.pad(sq.float(), pad, mode="replicate"), window, metric)


def align_padded(query: torch.Tensor, raw_pad: torch.Tensor, sq_pad: torch.Tensor, window: int,
                 metric: str = "cosine") -> torch.Tensor:
    """``align_features`` on references already padded by ``window`` (replicate) with their squared norms:
    [B,C,h,w], [B,k,C,h+2w,w+2w], [B,k,h+2w,w+2w] -> [B,k,C,h,w] in the query's dtype."""
    # colours (l2: 3 channels) cost little either way; compiling them would trace two more graphs
    with eager() if metric == "l2" else nullcontext():
        if not runs_compiled(_best_offsets):  # eager mixed-dtype products are slower than one float32 copy (measured)
            raw_pad = raw_pad.to(query.dtype)
        best = _best_offsets(query.unsqueeze(1), raw_pad, sq_pad, window, metric == "cosine")
        return _select_offsets(raw_pad, best, window).to(query.dtype)


def _gather_offsets(raw_pad: torch.Tensor, best: torch.Tensor, window: int) -> torch.Tensor:
    """The reference vector at each patch's best offset, by one gather (the fast form in eager mode)."""
    B, k, C, Hp, Wp = raw_pad.shape
    h, w = Hp - 2 * window, Wp - 2 * window
    off = torch.tensor(window_offsets(window), device=raw_pad.device)
    ys = torch.arange(h, device=raw_pad.device).view(1, 1, h, 1) + window + off[:, 0][best]
    xs = torch.arange(w, device=raw_pad.device).view(1, 1, 1, w) + window + off[:, 1][best]
    where = (ys * Wp + xs).view(B, k, 1, h * w).expand(B, k, C, h * w)
    return raw_pad.reshape(B, k, C, Hp * Wp).gather(3, where).view(B, k, C, h, w)


def _where_offsets(raw_pad: torch.Tensor, best: torch.Tensor, window: int) -> torch.Tensor:
    """The same selection as a chain of ``where`` over the window's shifted views: compiled, it is one fused
    pass and ~2x faster than the gather at the finest scale (measured); eager, 9 passes, so eager uses the gather.
    """
    h, w = best.shape[-2:]
    out = raw_pad[..., window:window + h, window:window + w]
    for o, (dy, dx) in enumerate(window_offsets(window)[1:], start=1):
        ys, xs = window + dy, window + dx
        out = torch.where((best == o).unsqueeze(2), raw_pad[..., ys:ys + h, xs:xs + w], out)
    return out


_select_offsets = maybe_compiled(_where_offsets, "comgen.features.memory._select_offsets", eager=_gather_offsets)


# --------------------------------------------------------------------------------------------------------------
# faiss index
# --------------------------------------------------------------------------------------------------------------
def _divisor_at_most(d: int, m: int) -> int:
    for cand in range(min(m, d), 0, -1):
        if d % cand == 0:
            return cand
    return 1


def build_index(desc: np.ndarray, kind: str, nlist: int = 0, pq_m: int = 16, nprobe: int = 8) -> tuple[Any, str]:
    """A faiss index over ``desc`` [N,D] float32; returns (index, effective kind).

    ``ivfpq`` needs enough points to train its quantisers (>= 39 per list and >= 256 codes); smaller banks fall
    back to ``sq8`` (trains from min/max only) and say so in the effective kind.
    """
    desc = np.ascontiguousarray(desc, dtype=np.float32)
    n, d = desc.shape
    if kind == "ivfpq":
        lists = nlist or max(1, int(round(np.sqrt(n))))
        if n < max(256, 39 * lists):
            log.warning("bank of %d images is too small to train IVF-PQ with %d lists; using sq8", n, lists)
            kind = "sq8"
        else:
            m = _divisor_at_most(d, pq_m)
            quant = faiss.IndexFlatL2(d)
            index = faiss.IndexIVFPQ(quant, d, lists, m, 8)
            index.train(desc)
            index.add(desc)
            index.nprobe = min(nprobe, lists)
            return index, f"ivfpq(nlist={lists},m={m})"
    if kind == "sq8":
        index = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_8bit)
        index.train(desc)
        index.add(desc)
        return index, "sq8"
    index = faiss.IndexFlatL2(d)
    index.add(desc)
    return index, "flat"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------------------
# the bank
# --------------------------------------------------------------------------------------------------------------
class MemoryBank:
    """Global retrieval + local patch alignment over the normal training images (see module doc)."""

    def __init__(self, cfg: MemoryBankConfig, backbone: Any, ids: list[str], patches: list[torch.Tensor],
                 desc: np.ndarray, index: Any, index_kind: str, stats: dict[str, Any] | None = None,
                 colors: torch.Tensor | None = None) -> None:
        self.cfg = cfg
        self.backbone = backbone
        self.ids = list(ids)
        self.patches = patches  # per scale [N,C,h,w] in cfg.feature_dtype
        self.desc = desc  # [N,D] float32
        self.colors = colors  # [N,3,S/cs,S/cs] Lab (cfg.feature_dtype) or None when cfg.color_stride == 0
        self.index = index
        self.index_kind = index_kind
        self.stats: dict[str, Any] = dict(stats or {})
        self._pos = {i: p for p, i in enumerate(self.ids)}
        self._sq_norms: list[torch.Tensor] | None = None  # per scale [N,h,w] float32, built on the first align
        self._padded: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # see padded()
        if len(self._pos) != len(self.ids):
            raise InputError("bank", "image ids must be unique")

    def __len__(self) -> int:
        return len(self.ids)

    # --- building -------------------------------------------------------------------------------------------
    @classmethod
    def build(cls, images: np.ndarray, ids: list[str], backbone: Any, cfg: MemoryBankConfig | None = None
              ) -> MemoryBank:
        """Extract features of the normal ``images`` (NxHxWx3 uint8, resized to ``cfg.image_size``) and index them."""
        cfg = cfg or MemoryBankConfig()
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[0] == 0:
            raise InputError("bank", f"empty bank: no normal images to build from (got shape {images.shape})")
        if len(ids) != images.shape[0]:
            raise InputError("bank", f"{images.shape[0]} images but {len(ids)} ids")
        images = resize_all(images, cfg.image_size)
        dtype = getattr(torch, cfg.feature_dtype)
        per_scale: list[list[torch.Tensor]] = []
        descs = []
        color_list: list[torch.Tensor] = []
        starts = range(0, images.shape[0], cfg.batch_size)
        for s in progress(starts, desc="bank features", total=len(starts)):
            feats = _extract(backbone, images[s:s + cfg.batch_size])
            if cfg.color_stride:
                color_list.append(lab_features(images[s:s + cfg.batch_size], cfg.color_stride).to(dtype))
            descs.append(global_descriptors(feats, cfg.global_grid, cfg.global_layer, cfg.global_dim, cfg.seed))
            if not per_scale:
                per_scale = [[] for _ in feats]
            for lst, f in zip(per_scale, feats):
                lst.append(f.to(dtype))
        desc = torch.cat(descs).numpy()
        patches = [torch.cat(lst) for lst in per_scale]
        colors = torch.cat(color_list) if color_list else None
        ids = list(ids)
        if cfg.coreset < 1.0:
            n_keep = max(cfg.k + 1, int(round(cfg.coreset * len(ids))))
            keep = torch.sort(greedy_k_center(torch.from_numpy(desc), n_keep, seed=cfg.seed)).values
            desc = desc[keep.numpy()]
            patches = [p[keep] for p in patches]
            colors = colors[keep] if colors is not None else None
            ids = [ids[i] for i in keep.tolist()]
        index, kind = build_index(desc, cfg.index, cfg.nlist, cfg.pq_m, cfg.nprobe)
        return cls(cfg, backbone, ids, patches, desc, index, kind, colors=colors)

    # --- querying -------------------------------------------------------------------------------------------
    def extract(self, images: np.ndarray | torch.Tensor) -> list[torch.Tensor]:
        """Backbone features of query images, refusing images of another size than the bank."""
        if isinstance(images, torch.Tensor):
            if images.ndim != 4 or tuple(images.shape[-2:]) != (self.cfg.image_size,) * 2:
                raise InputError("query", f"images are {tuple(images.shape)}, the bank was built at "
                                          f"{self.cfg.image_size}x{self.cfg.image_size}; resize them first")
            out: list[list[torch.Tensor]] = []
            for s in range(0, images.shape[0], self.cfg.batch_size):
                feats = self.backbone(images[s:s + self.cfg.batch_size])
                out = out or [[] for _ in feats]
                for lst, f in zip(out, feats):
                    lst.append(f)
            return [torch.cat(lst) for lst in out]
        arr = np.asarray(images)
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4 or arr.shape[1:3] != (self.cfg.image_size, self.cfg.image_size):
            raise InputError("query", f"images are {arr.shape[1:3] if arr.ndim == 4 else arr.shape}, the bank was "
                                      f"built at {self.cfg.image_size}x{self.cfg.image_size}; resize them first")
        out2: list[list[torch.Tensor]] = []
        for s in range(0, arr.shape[0], self.cfg.batch_size):
            feats = _extract(self.backbone, arr[s:s + self.cfg.batch_size])
            out2 = out2 or [[] for _ in feats]
            for lst, f in zip(out2, feats):
                lst.append(f)
        return [torch.cat(lst) for lst in out2]

    def _check_feats(self, feats: Sequence[torch.Tensor]) -> None:
        if len(feats) != len(self.patches):
            raise InputError("query", f"{len(feats)} feature scales, the bank has {len(self.patches)}")
        for s, (f, p) in enumerate(zip(feats, self.patches)):
            if f.ndim != 4 or tuple(f.shape[1:]) != tuple(p.shape[1:]):
                raise InputError("query", f"scale {s} features are {tuple(f.shape[1:])}, the bank holds "
                                          f"{tuple(p.shape[1:])} (another image size or backbone?)")

    def query(self, feats_or_images: Any, k: int | None = None,
              exclude_ids: Sequence[str | Collection[str] | None] | None = None
              ) -> tuple[torch.LongTensor, torch.Tensor]:
        """Top-k nearest bank images per query: (idx LongTensor[B,k] positions in the bank, squared L2 dist [B,k]).

        ``exclude_ids[b]`` (an id or a set of ids) is never returned for query b: pass a bank image's own id
        when querying with it (leave-one-out).
        """
        k = k or self.cfg.k
        if isinstance(feats_or_images, (list, tuple)) and feats_or_images and isinstance(feats_or_images[0],
                                                                                          torch.Tensor):
            feats = list(feats_or_images)
        else:
            feats = self.extract(feats_or_images)
        self._check_feats(feats)
        B = feats[0].shape[0]
        excl: list[set[int]] = [set() for _ in range(B)]
        if exclude_ids is not None:
            if len(exclude_ids) != B:
                raise InputError("query", f"{len(exclude_ids)} exclude_ids for {B} queries")
            for b, e in enumerate(exclude_ids):
                names = [e] if isinstance(e, str) else list(e or [])
                excl[b] = {self._pos[n] for n in names if n in self._pos}
        n_ex = max((len(e) for e in excl), default=0)
        if k > len(self) - n_ex:
            raise InputError("query", f"asked for {k} references but the bank has only {len(self)} images "
                                      f"({n_ex} excluded)")
        desc = global_descriptors([f.detach().cpu() for f in feats], self.cfg.global_grid,
                                  self.cfg.global_layer, self.cfg.global_dim, self.cfg.seed).numpy()
        search_k = min(len(self), k + n_ex)
        dist, idx = self.index.search(np.ascontiguousarray(desc, dtype=np.float32), search_k)
        out_i = np.empty((B, k), dtype=np.int64)
        out_d = np.empty((B, k), dtype=np.float32)
        for b in range(B):  # over queries only: drop excluded / missing (-1) hits
            keep = [(i, d) for i, d in zip(idx[b], dist[b]) if i >= 0 and i not in excl[b]][:k]
            if len(keep) < k:  # an IVF probe can miss; fall back to exact search on the stored descriptors
                keep = self._exact(desc[b], k, excl[b])
            out_i[b] = [i for i, _ in keep]
            out_d[b] = [d for _, d in keep]
        return torch.from_numpy(out_i), torch.from_numpy(out_d)

    def _exact(self, q: np.ndarray, k: int, excl: set[int]) -> list[tuple[int, float]]:
        d = ((self.desc - q[None]) ** 2).sum(1)
        if excl:
            d[list(excl)] = np.inf
        order = np.argsort(d)[:k]
        return [(int(i), float(d[i])) for i in order]

    def _checked_index(self, idx: torch.Tensor) -> torch.Tensor:
        idx = torch.as_tensor(idx, dtype=torch.long)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= len(self)):
            raise InputError("bank", f"reference index out of range 0..{len(self) - 1}")
        return idx

    def features(self, idx: torch.Tensor) -> list[torch.Tensor]:
        """Stored per-scale patch features of bank images ``idx`` [B,k] -> list of float32 [B,k,C,h,w]."""
        idx = self._checked_index(idx)
        B, k = idx.shape
        return [p[idx.reshape(-1).cpu()].float().view(B, k, *p.shape[1:]) for p in self.patches]

    def align(self, query_feats: Sequence[torch.Tensor], idx: torch.Tensor) -> list[torch.Tensor]:
        """Reference features re-ordered so each query patch gets its nearest reference patch in the window."""
        self._check_feats(query_feats)
        idx = self._checked_index(idx)
        if self.cfg.window == 0:
            return self.features(idx)
        B, k = idx.shape
        flat = idx.reshape(-1).cpu()
        return [align_padded(q, p[flat].view(B, k, *p.shape[1:]).to(q.device), n[flat].view(B, k, *n.shape[1:]).to(
            q.device), self.cfg.window) for q, (p, n) in zip(query_feats, self.padded())]

    def padded(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per scale (patches [N,C,h+2w,w+2w] in the stored dtype, squared norms [N,h+2w,w+2w] float32), padded
        by the alignment window once, so that aligning a batch copies each reference once (no pad per call)."""
        if self._padded is None:
            w = self.cfg.window
            pad = (w, w, w, w)
            self._padded = [(F.pad(p, pad, mode="replicate") if len(p) else p, F.pad(n, pad, mode="replicate")
                             if len(n) else n) for p, n in zip(self.patches, self.squared_norms())]
        return self._padded

    def squared_norms(self) -> list[torch.Tensor]:
        """Per scale [N,h,w] squared feature norms of every bank patch, computed once (in chunks, so the float32
        copy of the bank never exists whole): alignment then needs no pass over the references for them."""
        if self._sq_norms is None:
            self._sq_norms = [torch.cat([c.float().pow(2).sum(1) for c in p.split(64)]) if len(p) else
                              torch.zeros((0, *p.shape[2:])) for p in self.patches]
        return self._sq_norms

    def extract_colors(self, images: np.ndarray) -> torch.Tensor:
        """Lab colour scale of query images (NxSxSx3 uint8 at the bank's size), as stored in the bank."""
        if not self.cfg.color_stride:
            raise InputError("bank", "this bank stores no colour scale (color_stride=0)")
        arr = np.asarray(images)
        arr = arr[None] if arr.ndim == 3 else arr
        if arr.ndim != 4 or arr.shape[1:3] != (self.cfg.image_size, self.cfg.image_size):
            raise InputError("query", f"images are {arr.shape[1:3] if arr.ndim == 4 else arr.shape}, the bank was "
                                      f"built at {self.cfg.image_size}x{self.cfg.image_size}; resize them first")
        return lab_features(arr, self.cfg.color_stride)

    def align_colors(self, query_colors: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Reference Lab colours [B,k,3,h,w], each query pixel matched to its nearest colour in the window."""
        if self.colors is None:
            raise InputError("bank", "this bank stores no colour scale (color_stride=0)")
        idx = torch.as_tensor(idx, dtype=torch.long)
        B, k = idx.shape
        refs = self.colors[idx.reshape(-1)].float().view(B, k, *self.colors.shape[1:])
        return align_features(query_colors.float(), refs, self.cfg.color_window, metric="l2")

    # --- persistence ----------------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write the bank atomically (bank.json last, with checksums of the other files)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        meta_path = d / "bank.json"
        if meta_path.exists():
            meta_path.unlink()  # an interrupted re-save must not leave old metadata over new files
        tensors = {f"scale{s}": p.contiguous() for s, p in enumerate(self.patches)}
        tensors["global"] = torch.from_numpy(np.ascontiguousarray(self.desc))
        if self.colors is not None:
            tensors["color"] = self.colors.contiguous()
        with atomic_path(d / "patches.safetensors") as tmp:
            save_file(tensors, str(tmp))
        with atomic_path(d / "global.faiss") as tmp:
            faiss.write_index(self.index, str(tmp))
        self.cfg.save(d / "config.yaml")
        meta = {
            "format": FORMAT_VERSION,
            "n": len(self),
            "ids": self.ids,
            "backbone": self.backbone.identity(),
            "config": self.cfg.to_dict(),
            "config_hash": self.cfg.hash(),
            "index_kind": self.index_kind,
            "scales": [list(p.shape[1:]) for p in self.patches],
            "files": {name: _sha256(d / name) for name in ("patches.safetensors", "global.faiss")},
            "stats": self.stats,
        }
        atomic_write_json(meta_path, meta)
        return d

    @classmethod
    def load(cls, directory: str | Path, backbone: Any, expect: MemoryBankConfig | None = None) -> MemoryBank:
        """Load a saved bank; refuse (ArtifactError) another backbone or config, a corrupt file or an empty bank."""
        d = Path(directory)
        meta_path = d / "bank.json"
        if not meta_path.is_file():
            raise ArtifactError(d, "no memory bank here (bank.json missing); build it with `comgen mask`")
        try:
            meta = json.loads(meta_path.read_text())
            cfg = MemoryBankConfig.from_dict(meta["config"], where=str(meta_path))
            ids = list(meta["ids"])
            files = dict(meta["files"])
        except (ValueError, KeyError, TypeError, ConfigError) as exc:  # ValueError: not UTF-8, or not JSON
            raise ArtifactError(meta_path, f"corrupt bank metadata ({exc.__class__.__name__})") from None
        if meta.get("format") != FORMAT_VERSION:
            raise ArtifactError(meta_path, f"bank format {meta.get('format')} is not {FORMAT_VERSION}; rebuild it")
        if not ids or meta.get("n", 0) == 0:
            raise ArtifactError(d, "empty memory bank (0 images); rebuild it from the training images")
        _check_backbone(meta_path, meta.get("backbone", {}), backbone.identity())
        if expect is not None and expect.hash() != cfg.hash():
            diff = [f"{k}={v!r} (bank has {meta['config'].get(k)!r})" for k, v in expect.to_dict().items()
                    if meta["config"].get(k) != v]
            raise ArtifactError(d, f"bank was built with another config: {', '.join(diff)}; rebuild it")
        for name, digest in files.items():
            path = d / name
            if not path.is_file():
                raise ArtifactError(path, "bank file missing")
            if _sha256(path) != digest:
                raise ArtifactError(path, "corrupt bank file (checksum mismatch); rebuild the bank")
        try:
            tensors = load_file(str(d / "patches.safetensors"))
            index = faiss.read_index(str(d / "global.faiss"))
        except Exception as exc:
            raise ArtifactError(d, f"corrupt bank file ({exc.__class__.__name__})") from None
        patches = [tensors[f"scale{s}"] for s in range(len(meta["scales"]))]
        desc = tensors["global"].numpy()
        if index.ntotal != len(ids) or any(p.shape[0] != len(ids) for p in patches):
            raise ArtifactError(d, "corrupt bank: index, features and ids disagree in size")
        if hasattr(index, "nprobe"):
            index.nprobe = cfg.nprobe
        colors = tensors.get("color")
        if (colors is None) != (cfg.color_stride == 0) or (colors is not None and colors.shape[0] != len(ids)):
            raise ArtifactError(d, "corrupt bank: colour scale missing or of the wrong size")
        _check_values(d, tensors, meta.get("stats"))
        return cls(cfg, backbone, ids, patches, desc, index, meta.get("index_kind", cfg.index), meta.get("stats"),
                   colors=colors)


def _check_values(d: Path, tensors: dict[str, torch.Tensor], stats: Any) -> None:
    """Refuse NaN/inf features and non-numeric normal statistics. Why: checksums only prove the files are the ones
    saved; a bank saved with bad values gave NaN distances, masks and scores downstream without an error."""
    for key, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ArtifactError(d / "patches.safetensors", f"tensor {key} has NaN/infinite values; rebuild the bank")
    if stats is None:
        return
    quantiles = stats.get("quantiles", {}) if isinstance(stats, dict) else None
    if not isinstance(quantiles, dict) or not all(isinstance(q, dict) for q in quantiles.values()):
        raise ArtifactError(d / "bank.json", "corrupt normal statistics (stats.quantiles); rebuild the bank")
    for name, per_q in quantiles.items():
        for q, v in per_q.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ArtifactError(d / "bank.json", f"stats.quantiles.{name}.{q} must be a finite number, got {v!r}; "
                                                     "rebuild the bank")


def _check_backbone(where: Path, saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuse a bank whose features came from another network or other weights; name the difference."""
    for key in ("name", "layers", "fingerprint"):
        if saved.get(key) != current.get(key):
            raise ArtifactError(where, f"bank was built with backbone {key}={saved.get(key)!r} "
                                       f"(source {saved.get('source')!r}), not {current.get(key)!r} "
                                       f"(source {current.get('source')!r}); rebuild the bank or use that backbone")


def resize_all(images: np.ndarray, size: int) -> np.ndarray:
    """A stack of RGB images at ``size`` x ``size`` (area interpolation); the stack itself when already that size."""
    if images.shape[1:3] == (size, size):
        return images
    return np.stack([resize_rgb(im, size) for im in images])


def _extract(backbone: Any, images: np.ndarray) -> list[torch.Tensor]:
    return [f.detach().float().cpu() for f in backbone(to_tensor(images))]
