"""``OnnxDetector(bundle).predict(images) -> (scores, maps)``: ``Detector.predict`` without torch, faiss or sklearn.

Why: a production line runs the exported bundle with ONNX Runtime (or OpenVINO) and NumPy only; its scores, branch
scores and maps equal ``comgen predict``'s (tested within 1e-3). Each step below calls one function that mirrors
its torch counterpart (``ops``, ``retrieval``, ``prior``, ``branches``), in the order ``Detector.predict`` runs them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from comgen.components.map_edits import small_maps
from comgen.errors import ArtifactError, InputError
from comgen.evaluate.map_score import carry_score, read_peak_stats
from comgen.export_runtime.branches import (
    encode,
    fuse,
    global_arrays,
    map_weights,
    memory_embed,
    memory_scores,
    standardise,
)
from comgen.export_runtime.bundle import MANIFEST, REEXPORT, graph_path, read_arrays, read_manifest
from comgen.export_runtime.engines import open_graph
from comgen.export_runtime.prior import BundleCounts, BundlePrior, ensemble_z, pair_z, read_seed
from comgen.export_runtime.retrieval import align_scale, global_descriptors, nearest_references
from comgen.features.pooled import pooled_descriptors, standardised_distances

BRANCHES = ("network", "prior", "composition", "memory", "global", "counts")  # ``detect.fusion.BRANCHES``


def to_rgb_uint8(img: np.ndarray, where: str = "image") -> np.ndarray:
    """``detect.predict.to_rgb_uint8``: gray / gray+alpha / RGBA / 16-bit / float [0,1] arrays -> HxWx3 uint8."""
    a = np.asarray(img)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4) or min(a.shape[:2]) < 2:
        raise InputError(where, f"not an image array (shape {a.shape})")
    if a.dtype == np.uint16:
        a = (a >> 8).astype(np.uint8)
    elif a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise InputError(where, "image contains NaN or inf")
        a = (np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)
    elif a.dtype != np.uint8:
        raise InputError(where, f"unsupported image dtype {a.dtype}")
    if a.shape[2] in (1, 2):
        a = np.repeat(a[..., :1], 3, axis=2)
    elif a.shape[2] == 4:
        a = a[..., :3]
    return np.ascontiguousarray(a)


def to_input(images: np.ndarray) -> np.ndarray:
    """``features.backbone.to_tensor``: NxHxWx3 uint8 -> float32 NCHW in [0, 1]."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2)).astype(np.float32) / np.float32(255.0)


class OnnxDetector:
    """A detector export bundle, ready to predict (see the module doc). ``engine``: onnxruntime | openvino."""

    def __init__(self, bundle: str | Path, engine: str = "onnxruntime", threads: int = 0) -> None:
        d = Path(bundle)
        self.directory = d
        self.manifest = man = read_manifest(d)
        self.engine = engine
        self.image_size, self.k = int(man["image_size"]), int(man["k"])
        self.batch_size = int(man.get("batch_size", 8))
        self.calibration = man["calibration"]
        self.fusion = man["fusion"]
        self.map_peak = read_peak_stats(man.get("map_peak"), d / MANIFEST, REEXPORT)
        self.map_peak_width = float(man.get("map_peak_width", 0.5))  # checked by read_manifest
        self.last_parts: dict[str, np.ndarray] = {}
        arrays = {name: read_arrays(d, name, shapes) for name, shapes in man["arrays"].items()}
        self.backbone = open_graph(graph_path(d, man, "backbone"), engine, threads)
        self.head = open_graph(graph_path(d, man, "head"), engine, threads)
        bank = man["bank"]
        self.bank = bank
        b = arrays["bank.safetensors"]
        self.bank_desc = b["descriptors"]
        self.projection = b.get("projection")
        self.bank_patches = [b[f"scale{s}"] for s in range(len(bank["scales"]))]
        # ``MemoryBank.squared_norms``: from the stored (float16) features in float32
        self.bank_sq = [np.square(p.astype(np.float32)).sum(1) for p in self.bank_patches]
        self.prior = man.get("prior")
        self.counts: BundleCounts | None = None
        if self.prior is not None:
            members = self.prior.get("members") or []
            if not isinstance(members, list) or not all(isinstance(m, dict) for m in members):
                raise ArtifactError(d / MANIFEST, f"prior.members is malformed; {REEXPORT}")
            # one entry per learner seed: (model, counterpart or None, the pair's calibration)
            self.prior_seeds = [read_seed(self.prior, arrays, d / MANIFEST, "prior")]
            self.prior_seeds += [read_seed(m, arrays, d / MANIFEST, f"prior_seed{i}") for i, m in enumerate(members, 1)]
            self.prior_model, self.prior_partner, _ = self.prior_seeds[0]
            width = sum(len(m.count_columns()) for m in (self.prior_model, self.prior_partner) if m is not None)
            self.counts = BundleCounts.read(self.prior, arrays["prior.safetensors"], width, d / MANIFEST)
            comp = graph_path(d, man, "components")
            self.components = open_graph(comp, engine, threads) if comp is not None else None
        self.composition = man.get("composition")
        if self.composition is not None:
            self.composition_net = open_graph(graph_path(d, man, "composition"), engine, threads)
        self.memory = man.get("memory")
        if self.memory is not None:
            self.memory_patches = arrays["memory.safetensors"]["patches"]
        self.global_branch = man.get("global")
        if self.global_branch is not None:
            self.global_arrays = global_arrays(self.global_branch, arrays.get("global.safetensors"), d / MANIFEST)

    @property
    def threshold(self) -> float:
        return float(self.calibration["threshold"])

    # --- one step each, in ``Detector.predict``'s order -----------------------------------------------------
    def features(self, images: np.ndarray) -> list[np.ndarray]:
        """``CSDA.features``: the backbone graph's per-scale features [B,C,h,w] of working-size images."""
        return self.backbone({"image": to_input(images)})

    def aligned(self, feats: list[np.ndarray]) -> list[np.ndarray]:
        """``MemoryBank.query`` + ``MemoryBank.align``: the k nearest references, aligned patch-wise per scale."""
        desc = global_descriptors(feats, self.bank["global_grid"], self.bank["global_layer"], self.projection)
        idx = nearest_references(desc, self.bank_desc, self.k)
        return [align_scale(q, p[idx], n[idx], self.bank["window"])
                for q, p, n in zip(feats, self.bank_patches, self.bank_sq)]

    def network(self, feats: list[np.ndarray], aligned: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """``CSDAHead.forward`` (the head graph): uncalibrated image logits [B] and map logits [B,S,S]."""
        feeds = {f"feat_{s}": f for s, f in enumerate(feats)}
        feeds.update({f"ref_{s}": a for s, a in enumerate(aligned)})
        maps, logits = self.head(feeds)
        return logits.astype(np.float32), maps[:, 0].astype(np.float32)

    def class_maps(self, images: np.ndarray, feats: list[np.ndarray], model: BundlePrior | None = None
                   ) -> np.ndarray:
        """``composition_prior.segment_maps``: class maps at the component model's size (``model``: the prior's
        own by default), from the detector's own features where the backbones match (``shared_feature_index``),
        else from the components graph."""
        return (model or self.prior_model).class_maps(images, self._shared_deep(feats), self._components_deep)

    def _shared_deep(self, feats: list[np.ndarray]) -> np.ndarray | None:
        """The detector's features at the component model's layer [N,h,w,C], when the backbones match."""
        scale = self.prior.get("shared_scale")
        return None if scale is None else np.ascontiguousarray(feats[scale].transpose(0, 2, 3, 1))

    def _components_deep(self, chunk: np.ndarray) -> np.ndarray | None:
        """The component model's backbone features from the components graph (None: the learner has none)."""
        return None if self.components is None else self.components({"image": to_input(chunk)})[0]

    def prior_views(self, images: np.ndarray, feats: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        """``CompositionPrior.segment``: the prior's class maps, and the partner's from the same pixel pass (None
        without a partner, or when it has a pixel stage of its own)."""
        return self._seed_views(self.prior_seeds[0], images, feats)

    def _seed_views(self, seed: tuple[BundlePrior, BundlePrior | None, dict | None], images: np.ndarray,
                    feats: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        """One learner seed's class maps and its counterpart's from one pixel pass (None when the counterpart is
        missing or has a pixel stage of its own)."""
        model, partner, _ = seed
        if partner is None or not model.shares_pixel_stage(partner):
            return self.class_maps(images, feats, model), None
        return model.class_views(images, self._shared_deep(feats), self._components_deep, partner)

    def prior_scores(self, images: np.ndarray, maps: np.ndarray, feats: list[np.ndarray],
                     partner_maps: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """``CompositionPrior.score_branches``: z of the composition's negative log-density, paired with the partner
        model's when the bundle has one, then averaged over the learner seeds when it has several, and the count
        patterns' z (None without them) (``maps``: the first seed's own class maps; ``partner_maps``: its
        partner's, segmented here when not given)."""
        z, counts = self._seed_scores(self.prior_seeds[0], images, feats, maps, partner_maps)
        zs = [z] + [self._seed_scores(seed, images, feats)[0] for seed in self.prior_seeds[1:]]
        z = zs[0] if len(zs) == 1 else ensemble_z(zs, self.prior["ensemble"])
        return z, None if self.counts is None else self.counts.z(counts)

    def _seed_scores(self, seed: tuple[BundlePrior, BundlePrior | None, dict | None], images: np.ndarray,
                     feats: list[np.ndarray], maps: np.ndarray | None = None,
                     partner_maps: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One learner seed's calibrated prior scores, paired with its counterpart's (maps segmented here when not
        given; one pixel pass serves both models where they share it), and the two models' per-class counts."""
        model, partner, pair = seed
        if maps is None:
            maps, partner_maps = self._seed_views(seed, images, feats)
        vecs = model.vectors(images, maps)
        z, counts = model.scores(vecs), model.counts(vecs)
        if partner is None:
            return z, counts
        if partner_maps is None:
            partner_maps = self.class_maps(images, feats, partner)
        partner_vecs = partner.vectors(images, partner_maps)
        return pair_z(z, partner.scores(partner_vecs), pair), np.hstack([counts, partner.counts(partner_vecs)])

    def composition_scores(self, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``composition_branch.branch_scores`` + its calibration: z-scores [B] and z-maps [B,S,S]."""
        c = self.composition
        x, st = encode(small_maps(maps, c["edit_size"]), c["num_classes"], c["grid"])
        m, g = self.composition_net({"x": x, "stats": st})
        sc, zm = standardise(g.astype(np.float32), m.astype(np.float32), c)
        return sc, zm

    def memory_scores(self, feats: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """``PatchMemory.score`` + its calibration (``Detector._memory_scores``): z-scores [B] and z-maps."""
        m = self.memory
        sc, maps = memory_scores(memory_embed(feats, m["scales"], m["neighbourhood"]), self.memory_patches,
                                 self.image_size, m["blur_sigma"])
        return standardise(sc, maps, m)

    def global_scores(self, feats: list[np.ndarray]) -> np.ndarray:
        """``GlobalBranch.score`` + its calibration (``Detector._global_scores``): z-scores [B]."""
        g = self.global_branch
        desc = pooled_descriptors(feats, g["scales"], g["grid"])
        return ((standardised_distances(desc, *self.global_arrays) - g["score_mean"]) / g["score_std"]
                ).astype(np.float32)

    # --- the whole path -------------------------------------------------------------------------------------
    def predict(self, images: Sequence[np.ndarray] | np.ndarray, batch_size: int | None = None
                ) -> tuple[np.ndarray, np.ndarray | list[np.ndarray]]:
        """Calibrated fused image scores [N] and maps at each image's original size (``Detector.predict``).

        ``maps`` is one float32 array [N,H,W] when all images share a size, else a list of [H,W] arrays; each
        branch's scores of this call are in ``last_parts``.
        """
        if images is None or len(images) == 0:
            raise InputError("images", "empty image list; nothing to predict")
        bs = batch_size or self.batch_size
        if not isinstance(bs, int) or isinstance(bs, bool) or bs < 1:
            raise InputError("batch_size", f"must be an integer >= 1, got {bs!r}")
        s = self.image_size
        parts = {b: np.full(len(images), np.nan, np.float32) for b in BRANCHES}
        have = ["network"] + (["composition"] if self.composition is not None else []) + \
            (["memory"] if self.memory is not None else [])
        weights = map_weights(self.fusion, have)
        maps: list[np.ndarray] = []
        for i in range(0, len(images), bs):
            chunk, shapes = [], []
            for j in range(i, min(i + bs, len(images))):
                img = to_rgb_uint8(images[j], f"image {j}")
                shapes.append(img.shape[:2])
                if img.shape[:2] != (s, s):
                    img = cv2.resize(img, (s, s), interpolation=cv2.INTER_AREA)
                chunk.append(img)
            sl = slice(i, i + len(chunk))
            batch = np.stack(chunk)
            feats = self.features(batch)
            logits, mlog = self.network(feats, self.aligned(feats))
            sc, mp = standardise(logits, mlog, self.calibration)
            parts["network"][sl] = sc
            zmaps = {"network": mp}
            if self.prior is not None:
                cmaps, partner_maps = self.prior_views(batch, feats)
                parts["prior"][sl], counts = self.prior_scores(batch, cmaps, feats, partner_maps)
                if counts is not None:
                    parts["counts"][sl] = counts
                if self.composition is not None:
                    parts["composition"][sl], zmaps["composition"] = self.composition_scores(cmaps)
            if self.memory is not None:
                parts["memory"][sl], zmaps["memory"] = self.memory_scores(feats)
            if self.global_branch is not None:
                parts["global"][sl] = self.global_scores(feats)
            if weights != {"network": 1.0}:
                mp = sum(w * zmaps[b] for b, w in weights.items())
            for m, (h, w) in zip(mp, shapes):
                maps.append(m if (h, w) == (s, s) else cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR))
        self.last_parts = {b: v for b, v in parts.items() if not np.isnan(v).all()}
        scores = fuse(self.last_parts, self.fusion)
        if self.manifest.get("map_carries_score", True):
            carry_score(maps, scores, self.map_peak, self.map_peak_width)
        if len({m.shape for m in maps}) == 1:
            return scores, np.stack(maps)
        return scores, maps
