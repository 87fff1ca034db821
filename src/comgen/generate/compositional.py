"""The compositional (CPU) back-end: Prompt Modifications applied in pixel space, kept by Low-Density Sampling.

Why: it needs no diffusion model, so it runs anywhere and gives *exact* masks. Parts come from real normal
images (component bank); holes are filled from the most similar normal image (global Lab-thumbnail retrieval)
where that image shows what surrounds the removed part, else by OpenCV inpainting; pasted parts are blended
with a feathered alpha (or Poisson, ``blend="poisson"``) so no hard seam gives the anomaly away.
For the built-in benchmark, each edit is also applied to the generator's truth part-label map
(``Anomaly.extra["truth_labels"]``) so the benchmark's rule checker can tell whether the edit broke a rule.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace

import cv2
import numpy as np

from comgen.components.composition import min_area_pixels, rgb_to_lab
from comgen.components.density import ComponentRealism, CompositionDensity
from comgen.components.features import resize_square
from comgen.components.learner import counterpart, learn_components
from comgen.components.model import ComponentModel
from comgen.data.synth.truth import load_truth, truth_path
from comgen.errors import ArtifactError, InputError
from comgen.generate.component_bank import ComponentBank, dilate, ring
from comgen.generate.config import CompositionalConfig
from comgen.generate.edits import EditPlan, discrete_capacity, edit_key, plan_edit, possible_kinds
from comgen.generate.structural import apply_structural
from comgen.progress import progress
from comgen.records import LOGICAL_EDITS, STRUCTURAL_EDITS, Anomaly, Sample
from comgen.rundir import RunDir


def canonical_key(key: tuple) -> str:
    """A duplicate key as JSON text (NumPy scalars as Python numbers), comparable across processes."""
    return json.dumps(key, default=lambda v: v.item() if isinstance(v, np.generic) else str(v))


# --- rendering --------------------------------------------------------------------------------

def _feather(mask: np.ndarray, sigma: float) -> np.ndarray:
    a = mask.astype(np.float32)
    if sigma > 0.2:
        a = np.maximum(a, cv2.GaussianBlur(a, (0, 0), sigma))  # soft outside, fully opaque inside
    return a


def lighting_gain(dst: np.ndarray, dst_where: np.ndarray, src: np.ndarray, src_where: np.ndarray,
                  limit: float = 0.35) -> np.ndarray:
    """Per-channel gain [3] that maps the lighting of ``src`` onto ``dst``, from pixels that show the same surface.

    Why: normal images differ in exposure and colour cast; a part or a patch of surface copied from another image
    keeps *its* lighting and shows as a tinted disc (the realism probe and the eye both caught it). Lighting is
    multiplicative, so a ratio of means over one surface (the background, or the ring around a hole) corrects it.
    Clipped to 1 +- ``limit``; 1 when either side has too few pixels.
    """
    if dst_where.sum() < 16 or src_where.sum() < 16:
        return np.ones(3, np.float32)
    g = (dst[dst_where].reshape(-1, 3).mean(0) + 1.0) / (src[src_where].reshape(-1, 3).mean(0) + 1.0)
    return np.clip(g, 1.0 - limit, 1.0 + limit).astype(np.float32)


def _relit(rgb: np.ndarray, gain: np.ndarray) -> np.ndarray:
    return np.clip(rgb.astype(np.float32) * gain + 0.5, 0, 255).astype(np.uint8)


def _fill_hole(img: np.ndarray, cm: np.ndarray, truth: np.ndarray | None, hole: np.ndarray,
               ref: np.ndarray, ref_cm: np.ndarray, ref_truth: np.ndarray | None, sigma: float) -> None:
    """Refill ``hole`` in place with the surface around it: the nearest normal image's pixels where it shows that
    surface, inpainting elsewhere."""
    around = ring(hole, max(2, hole.shape[0] // 64))
    surface = _surface_classes(cm, hole, around)
    _fill_from_reference(img, cm, truth, hole, around, surface, ref, ref_cm, ref_truth, sigma)


def _surface_classes(cm: np.ndarray, hole: np.ndarray, around: np.ndarray) -> np.ndarray:
    """The classes to restore in a hole: those around it, less the classes of the part being removed."""
    around_cls = np.unique(cm[around]) if around.any() else np.array([0])
    # the surface to restore is what surrounds the hole, not the classes being removed: a removed connector's
    # levers touch the ring, and copying the reference's levers into the hole left a purple blob
    core = cv2.erode(hole.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
    if core.any():
        drop = np.isin(around_cls, np.unique(cm[core]))
        surface = around_cls[~drop]
        around_cls = surface if len(surface) else around_cls
    return around_cls


def _write_feathered(img: np.ndarray, filled: np.ndarray, hole: np.ndarray, sigma: float) -> None:
    """Blend a refilled hole into ``img`` in place, opaque inside the hole and soft just outside."""
    a = _feather(hole, sigma)[..., None]
    img[:] = (a * filled + (1 - a) * img).round().astype(np.uint8)


def _surface_margin(size: int) -> int:
    """Pixels of a surface class this close to another class are a part's soft edge, not surface (segmentation
    labels that edge as surface; copied into a hole, it showed as a pale crescent)."""
    return max(1, size // 85)


def _fill_from_reference(img: np.ndarray, cm: np.ndarray, truth: np.ndarray | None, hole: np.ndarray,
                         around: np.ndarray, surface: np.ndarray, ref: np.ndarray, ref_cm: np.ndarray,
                         ref_truth: np.ndarray | None, sigma: float) -> None:
    """Reference pixels where the reference shows the surface (relit by ``lighting_gain`` over the ring around
    the hole, where both images show the same class), inpainting for the rest."""
    ref_surface = np.isin(ref_cm, surface)
    from_ref = hole & ref_surface & ~dilate(~ref_surface, _surface_margin(hole.shape[0]))
    rest = hole & ~from_ref
    filled = img.copy()
    if from_ref.any():
        same = around & (ref_cm == cm)
        filled[from_ref] = _relit(ref[from_ref], lighting_gain(img, same, ref, same))
    if rest.any():
        ys, xs = np.nonzero(dilate(hole, 4))
        sl = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
        filled[sl] = cv2.inpaint(filled[sl], rest[sl].astype(np.uint8), 3, cv2.INPAINT_TELEA)
    _write_feathered(img, filled, hole, sigma)
    fill_cls = int(np.bincount(cm[around]).argmax()) if around.any() else 0
    cm[from_ref] = ref_cm[from_ref]
    cm[rest] = fill_cls
    if truth is not None:
        fill_t = int(np.bincount(truth[around]).argmax()) if around.any() else 0
        if ref_truth is not None:
            truth[from_ref] = ref_truth[from_ref]
        else:
            truth[from_ref] = fill_t
        truth[rest] = fill_t


def _paste(img: np.ndarray, cm: np.ndarray, truth: np.ndarray | None, p, sigma: float, blend: str) -> np.ndarray:
    """Blend one part into ``img`` in place; returns the full-size mask of the pasted part."""
    h, w = p.mask.shape
    H, W = cm.shape
    y, x = p.top_left
    ys, xs, ye, xe = max(0, y), max(0, x), min(H, y + h), min(W, x + w)
    full = np.zeros(cm.shape, bool)
    if ye <= ys or xe <= xs:
        return full
    sub = (slice(ys - y, ye - y), slice(xs - x, xe - x))
    dst = (slice(ys, ye), slice(xs, xe))
    m = p.mask[sub]
    full[dst] = m
    if blend == "poisson" and m.sum() > 16:
        pad = 3
        # the clone region must include a margin: Poisson keeps gradients *inside* the mask, so a mask that ends
        # exactly at the part's edge would discard the edge and reproduce the destination
        big = dilate(np.pad(m, pad), 2).astype(np.uint8) * 255
        src = cv2.copyMakeBorder(p.rgb[sub], pad, pad, pad, pad, cv2.BORDER_REFLECT)
        # OpenCV places the centre of the mask's bounding box at the given point
        my, mx = np.nonzero(m)
        cy = ys + my.min() + (my.max() - my.min() + 1) // 2
        cx = xs + mx.min() + (mx.max() - mx.min() + 1) // 2
        try:
            out = cv2.seamlessClone(src, img, big, (int(cx), int(cy)), cv2.NORMAL_CLONE)
            img[:] = out
        except cv2.error:
            blend = "alpha"
    if blend == "alpha":
        a = np.zeros(cm.shape, np.float32)
        a[dst] = m
        a = _feather(a > 0, sigma)
        src = img.astype(np.float32)
        src[dst] = np.where(m[..., None], p.rgb[sub], img[dst])
        img[:] = (a[..., None] * src + (1 - a[..., None]) * img).round().astype(np.uint8)
    cm[full] = p.class_id
    if truth is not None and p.truth is not None:
        truth[dst] = np.where(m, p.truth[sub], truth[dst])
    return full


def _recolor(img: np.ndarray, mask: np.ndarray, delta: np.ndarray, sigma: float) -> None:
    ys, xs = np.nonzero(dilate(mask, 3))
    sl = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    lab = rgb_to_lab(img[sl]) + delta
    lab[..., 0] = np.clip(lab[..., 0], 0, 100)
    rgb = np.clip(cv2.cvtColor(lab.astype(np.float32), cv2.COLOR_LAB2RGB) * 255.0, 0, 255)
    a = _feather(mask[sl], sigma * 0.5)[..., None]
    img[sl] = (a * rgb + (1 - a) * img[sl]).round().astype(np.uint8)


def render(plan: EditPlan, bank: ComponentBank, blend: str = "alpha",
           feather: float = 1.2) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int]:
    """Render a plan: (edited image, exact anomaly mask, edited truth labels or None, reference index)."""
    i = plan.source
    img = bank.images[i].copy()
    cm = bank.class_maps[i].copy()
    truth = None if bank.truths[i] is None else bank.truths[i].copy()
    sigma = feather * bank.size / 256.0
    mask = np.zeros(cm.shape, bool)
    r = bank.reference(i)
    if plan.erase is not None and plan.erase.any():
        _fill_hole(img, cm, truth, plan.erase, bank.images[r], bank.class_maps[r], bank.truths[r], sigma)
        mask |= plan.erase
    gains: dict[int, np.ndarray] = {}  # one gain per source image
    for p in plan.pastes:
        if p.source >= 0 and p.source != i:  # a part from another image: bring it into this image's lighting
            if p.source not in gains:
                bg = bank.background
                gains[p.source] = lighting_gain(bank.images[i], bank.class_maps[i] == bg, bank.images[p.source],
                                                bank.class_maps[p.source] == bg)
            p = replace(p, rgb=_relit(p.rgb, gains[p.source]))
        mask |= _paste(img, cm, truth, p, sigma, blend)
    if plan.recolor is not None:
        m, delta = plan.recolor
        _recolor(img, m, delta, sigma)
        mask |= m
    if plan.structural is not None:
        s = plan.structural
        donor = s["params"].get("donor")
        img, m = apply_structural(s["kind"], img, s["mask"], s["params"]["seed"],
                                  None if donor is None else bank.images[donor])
        mask |= m
    return img, mask, truth, r


# --- the generator -----------------------------------------------------------------------------

def _resize(image: np.ndarray, size: int) -> np.ndarray:
    return resize_square(image[None], size)[0]


def _load_truth(sample: Sample) -> np.ndarray | None:
    """The built-in benchmark's part labels of a training image, when it has them (for the rule checker)."""
    return load_truth(sample) if truth_path(sample).exists() else None


RUN_CLASSES = "the run's component model"  # ``classes_of`` as a run's edits usually are
INSTANCE_CLASSES = "instance stage"  # ``classes_of`` when the edits act on the instance stage's classes
PROBE_ROUNDS = 12  # rounds of candidates per logical edit kind when two component models' kept edits are weighed


class CompositionalGenerator:
    """ComGEN's CPU back-end: component bank + Prompt Modifications + Low-Density Sampling."""

    name = "compositional"

    def __init__(self, cfg: CompositionalConfig | None = None) -> None:
        self.cfg = cfg or CompositionalConfig()
        self.model = None
        self.classes_of = RUN_CLASSES  # whose classes the edits act on (see ``fit``)
        self.fit_note = ""  # logged by the writer when fitting fell back on the instance stage's classes
        self.bank: ComponentBank | None = None
        self.density: CompositionDensity | None = None
        self.realism: ComponentRealism | None = None
        self.stats: dict[str, dict[str, int]] = {}
        self._seen: set = set()
        self._consulted: set = set()  # duplicate keys looked up since the last resume_state (see consulted_keys)

    # --- fit ------------------------------------------------------------------------------------
    def _component_model(self, images: np.ndarray, run: RunDir | None, where: str):
        if run is not None and self.cfg.reuse_components and (run.components / "model.json").is_file():
            return ComponentModel.load(run.components)
        lcfg = self.cfg.learner.replace(image_size=self.cfg.image_size)
        model = learn_components(images, lcfg, where=where)
        if run is not None:
            model.save(run.components)
        return model

    def _bank(self, model: ComponentModel, images: np.ndarray, truths: list, train: list[Sample]) -> ComponentBank:
        s = self.cfg.image_size
        return ComponentBank(images, model.segment(images), truths, [t.image_id for t in train],
                             [str(t.path) for t in train], background=model.background,
                             min_area=min_area_pixels(model.cfg.min_area, s, s),
                             part_classes=model.instance_stage is not None, carriers_stay=self.cfg.carriers_stay)

    def _instance_classes(self, images: np.ndarray, truths: list, train: list[Sample]
                          ) -> tuple[ComponentModel, ComponentBank] | None:
        """The instance stage's model and bank (None when it cannot be learnt from these images)."""
        try:
            twin = counterpart(self.model, images)
        except InputError:
            return None
        return twin, self._bank(twin, images, truths, train)

    def _prepare(self, where: str) -> None:
        """Edit kinds, composition density and realism check of the current bank."""
        s = self.cfg.image_size
        self.reasons = possible_kinds(self.bank)
        self.kinds = [k for k in self.cfg.edit_kinds if self.reasons[k] is None]
        if not self.kinds:
            why = "; ".join(f"{k}: {self.reasons[k]}" for k in self.cfg.edit_kinds)
            raise InputError(where, f"no requested edit kind is possible ({why})")
        comps = [c for cs in self.bank.components for c in cs]
        self.density = CompositionDensity(self.cfg.density, self.model.num_classes, self.model.background)
        vecs = np.stack([self.density.vector(cs, (s, s)) for cs in self.bank.components])
        self.density.fit(vecs)
        self.realism = ComponentRealism(self.cfg.density).fit(comps, (s, s))

    def _kept_logical(self) -> int:
        """How many distinct logical candidate edits of the current bank Low-Density Sampling and the realism check
        keep out of a fixed probe: ``PROBE_ROUNDS`` rounds of candidates per logical edit kind, with a fixed seed so
        that a resumed run decides alike."""
        rng = np.random.default_rng(0)
        kept: set = set()
        for kind in (k for k in self.kinds if k in LOGICAL_EDITS):
            for _ in range(PROBE_ROUNDS):
                picks = [int(i) for i in rng.integers(len(self.bank), size=self.cfg.candidates)]
                plans = [p for p in (plan_edit(kind, self.bank, i, self.bank.composition(i), rng) for i in picks)
                         if p is not None]
                if plans:
                    kept.update(plans[j].key() for j in self._passes(plans, logical=True)[0])
        return len(kept)

    def fit(self, train: list[Sample], run: RunDir | None = None) -> None:
        if not train:
            raise InputError("train", "no training samples")
        where = str(train[0].path.parent)
        s = self.cfg.image_size
        images = np.stack([_resize(t.load_image(), s) for t in progress(train, desc="compositional: load")])
        truths = []
        for t in train:
            tr = _load_truth(t)
            truths.append(None if tr is None else cv2.resize(tr, (s, s), interpolation=cv2.INTER_NEAREST))
        self.model = self._component_model(images, run, where)
        self.bank = self._bank(self.model, images, truths, train)
        self.classes_of, self.fit_note = RUN_CLASSES, ""
        self._prepare(where)
        if self.cfg.carriers_stay and self.model.instance_stage is None and self.cfg.low_density:
            self._weigh_instance_classes(images, truths, train, where)
        self._seen, self._consulted = set(), set()

    def _weigh_instance_classes(self, images: np.ndarray, truths: list, train: list[Sample], where: str) -> None:
        """Let the edits act on the instance stage's classes where the colour classes keep far fewer logical edits.

        Why: a fixture of the parts' colour takes them into its colour class, which leaves no part to edit; the
        few edits still kept move slabs of the fixture. The instance stage finds those parts. Both models' kept
        candidates are counted on the same probe; the run's component model stays as it is.
        """
        share = self.cfg.instance_fallback_share
        colour = self._kept_logical()
        most = PROBE_ROUNDS * self.cfg.candidates * sum(k in LOGICAL_EDITS for k in self.cfg.edit_kinds)
        if colour >= share * most:  # no count of the instance stage's could outweigh it
            return
        found = self._instance_classes(images, truths, train)
        if found is None:
            return
        kept = (self.model, self.bank, self.reasons, self.kinds, self.density, self.realism)
        self.model, self.bank = found
        try:
            self._prepare(where)
            instance = self._kept_logical()
        except InputError:
            instance = 0
        if colour < share * instance:
            self.classes_of = INSTANCE_CLASSES
            self.fit_note = (f"the colour classes keep {colour} logical edits of a probe and the instance stage's "
                             f"{instance} (a fixture took parts into its colour class); the edits act on the "
                             "instance stage's classes")
        else:
            self.model, self.bank, self.reasons, self.kinds, self.density, self.realism = kept

    def _passes(self, plans: list[EditPlan], logical: bool) -> tuple[list[int], np.ndarray]:
        """Indices of ``plans`` that Low-Density Sampling and the realism check keep (logical edits only), and
        every plan's density score."""
        shape = (self.bank.size, self.bank.size)
        vecs = np.stack([self.density.vector(p.components, shape) for p in plans])
        scores = self.density.score(vecs)
        ok = []
        for j, p in enumerate(plans):
            if logical and self.cfg.low_density and scores[j] >= self.density.threshold:
                continue
            edited = p.components[-len(p.pastes):] if p.pastes else []
            if p.recolor is not None:
                edited = [p.components[-1]]
            if logical and not all(self.realism.realistic(c, shape) for c in edited):
                continue
            ok.append(j)
        return ok, scores

    # --- generate -------------------------------------------------------------------------------
    def _accept(self, plans: list[EditPlan], logical: bool) -> tuple[list[int], np.ndarray]:
        ok, scores = self._passes(plans, logical)
        keys = [p.key() for p in plans]
        self._consulted.update(keys)
        return [j for j in ok if keys[j] not in self._seen], scores

    def generate(self, n: int, rng: np.random.Generator) -> Iterator[Anomaly]:
        if self.bank is None:
            raise InputError("compositional", "generator is not fitted; call fit() first")
        if n < 0:
            raise InputError("compositional", f"n must be >= 0, got {n}")
        cap = self.capacity()
        if n > cap:
            raise InputError("compositional", f"asked for {n} unique anomalies but only {int(cap)} distinct edits "
                                              f"exist with edit kinds {self.kinds}")
        return self._generate(n, rng)

    def _generate(self, n: int, rng: np.random.Generator) -> Iterator[Anomaly]:
        logical = [k for k in self.kinds if k in LOGICAL_EDITS]
        structural = [k for k in self.kinds if k in STRUCTURAL_EDITS]
        failures = {k: 0 for k in self.kinds}
        made = 0
        while made < n:
            if not logical and not structural:
                raise InputError("compositional", f"made {made} of {n} anomalies; no edit kind still yields new "
                                                  "low-density edits (lower density.percentile, set "
                                                  "low_density false, or allow more edit kinds)")
            want_logical = bool(logical) and (not structural or rng.random() < self.cfg.logical_ratio)
            pool = logical if want_logical else structural
            kind = pool[int(rng.integers(len(pool)))]
            plans = []
            for _ in range(self.cfg.candidates * 3):
                if len(plans) >= self.cfg.candidates:
                    break
                i = int(rng.integers(len(self.bank)))
                comp = self.bank.composition(i)
                p = plan_edit(kind, self.bank, i, comp, rng)
                if p is not None:
                    plans.append(p)
            st = self.stats.setdefault(kind, {"proposed": 0, "kept": 0})
            st["proposed"] += len(plans)
            ok, scores = self._accept(plans, want_logical) if plans else ([], None)
            if not ok:
                failures[kind] += 1
                if failures[kind] >= self.cfg.kind_patience:
                    pool.remove(kind)
                continue
            failures[kind] = 0
            j = ok[int(rng.integers(len(ok)))]
            plan = plans[j]
            img, mask, truth, ref = render(plan, self.bank, self.cfg.blend, self.cfg.feather)
            min_px = max(2, int(round(self.cfg.min_mask_area * mask.size)))
            if mask.sum() < min_px or np.array_equal(img, self.bank.images[plan.source]):
                failures[kind] += 1
                if failures[kind] >= self.cfg.kind_patience * 4:
                    pool.remove(kind)
                continue
            self._seen.add(plan.key())
            st["kept"] += 1
            made += 1
            yield self._anomaly(plan, img, mask, truth, ref, float(scores[j]), want_logical)

    def _anomaly(self, plan: EditPlan, img, mask, truth, ref: int, score: float, logical: bool) -> Anomaly:
        sigma = max(1.0, 2.0 * self.bank.size / 256.0)
        gate = cv2.GaussianBlur(plan.gate.astype(np.float32), (0, 0), sigma)
        gate = np.clip(gate / max(float(gate.max()), 1e-6), 0, 1)
        edit = plan.edit
        edit.params["reference"] = self.bank.ids[ref]
        if "donor" in edit.params:  # which normal image a transplant took its patch from
            edit.params["donor_id"] = self.bank.ids[edit.params["donor"]]
        edit.params["density_threshold"] = round(self.density.threshold, 4)
        if self.classes_of == INSTANCE_CLASSES:  # the prompt's tokens name the instance stage's classes
            edit.params["classes_of"] = INSTANCE_CLASSES
        extra = {"gate": gate, "prompt": edit.params["prompt"], "source_prompt": edit.params["source_prompt"],
                 "reference": self.bank.paths[ref]}
        if truth is not None:
            extra["truth_labels"] = truth
        return Anomaly(image=img, mask=mask, edit=edit, source=self.bank.paths[plan.source], density=score,
                       backend=self.name, kind="logical" if logical else "structural", extra=extra)

    # --- resumption / uniqueness ------------------------------------------------------------------
    def capacity(self) -> float:
        """How many distinct anomalies can still be made (inf unless only parameter-free edit kinds are on)."""
        if self.bank is None:
            raise InputError("compositional", "generator is not fitted; call fit() first")
        return discrete_capacity(self.bank, self.kinds) - len(self._seen)

    def resume_state(self, lines: list[dict]) -> None:
        """Rebuild the duplicate keys from manifest lines already written (writer hook), so a resumed or
        chunked run refuses exactly the duplicates an uninterrupted run would."""
        self._seen = self._keys(lines)
        self._consulted = set()

    def _keys(self, lines: list[dict]) -> set[tuple]:
        index = {p: i for i, p in enumerate(self.bank.paths)} if self.bank is not None else {}
        keys = set()
        for ln in lines:
            if ln.get("backend", self.name) != self.name or ln.get("source") not in index:
                continue
            keys.add(edit_key(index[ln["source"]], ln.get("kind", ""), ln.get("target", []),
                              ln.get("classes", []), ln.get("params", {})))
        return keys

    def consulted_keys(self) -> list[str]:
        """The duplicate keys looked up since the last ``resume_state``, as canonical JSON (writer hook).

        Why: a shard generates its blocks without the lines of the blocks below it (another shard writes them);
        a block whose lookups miss every key of those lines made the same choices an unsharded run makes, so the
        merge regenerates only the blocks whose lookups hit one (``line_keys``), and sharding stays exact.
        """
        return sorted(canonical_key(k) for k in self._consulted)

    def line_keys(self, lines: list[dict]) -> set[str]:
        """The duplicate keys of manifest lines, as canonical JSON (writer hook, see ``consulted_keys``)."""
        return {canonical_key(k) for k in self._keys(lines)}

    # --- helpers for benches / other stages ---------------------------------------------------------
    def normal_scores(self) -> np.ndarray:
        if self.density is None:
            raise ArtifactError("compositional", "not fitted")
        return self.density.normal_scores
