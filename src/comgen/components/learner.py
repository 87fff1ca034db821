"""Multi-Component Learning on the CPU: k-means on per-pixel (deep + Lab) features across all normal images.

Why this way (docs/design.md, "Multi-Component Learning"; ComAD): normal images of one category share a small set of
part classes; clustering pixels across *all* images binds each cluster to one part class, so the same part
gets the same class id (token) in every image. K is picked by colour distinctness (or silhouette, BIC) on a pixel
subsample. The background is the class that dominates the image border; foreground classes are numbered by pixel share.

Choices, each measured with bench/components_ari.py on the built-in categories (figures in docs/experiments.md):
- one scale per feature block (``scale_mode="block"``), so chroma columns of tiny spread are not blown up to the
  weight of lightness and sensor noise does not split the background;
- backbone layer 1 only (layer 2, stride 16, blurs thin parts) and ``flatfield="border"`` (the lighting ramp is
  removed, so the background is not worth splitting);
- ``k_select="distinct"``: the largest K whose clusters' mean colours are all far apart in Lab, counting two
  clusters that seldom share an image as one part (a cable that is yellow in one image, blue in another); it is
  stable across training draws;
- ``split_by_color`` (hue split of mixed clusters), so two small parts of different colour get their own classes.
Known limits: parts close in colour to the background or to each other merge (washers on a dark background, a
screw with its bag). ``k_select="balanced"`` (per-cluster silhouette) is the fallback when no K has distinct colours.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from comgen.components.features import (
    FeatureTransform,
    LearnerConfig,
    PixelFeaturizer,
    build_backbone_for,
    check_images,
    resize_square,
)
from comgen.components.model import ComponentModel
from comgen.errors import InputError
from comgen.progress import progress

MIN_TRAIN_IMAGES = 8
#: Raise it when the same LearnerConfig learns different classes than before, so that a run's learn stage (and the
#: stages after it, generation included) is redone after an upgrade instead of keeping the old code's classes.
LEARNER_REVISION = 2
#: Raise it when the instance stage (``components/instances.py``) finds other classes under the same config. Only
#: the stages that fit the stage are redone: learning with ``learn.instances``, and training, whose composition
#: prior fits the counterpart model.
INSTANCE_REVISION = 6


def _sample_pixels(images: np.ndarray, fz: PixelFeaturizer, cfg: LearnerConfig,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """Lab and raw deep features at ``pixels_per_image`` random pixels of every image."""
    s = images.shape[1]
    labs, deeps = [], []
    bs = max(1, cfg.batch_size)
    for i in progress(range(0, len(images), bs), desc="learn: features", total=-(-len(images) // bs)):
        batch = images[i:i + bs]
        lab = fz.lab(batch)
        deep = fz.deep(batch)
        n = len(batch)
        m = min(cfg.pixels_per_image, s * s)
        ys = rng.integers(0, s, (n, m))
        xs = rng.integers(0, s, (n, m))
        bi = np.repeat(np.arange(n), m).reshape(n, m)
        labs.append(lab[bi, ys, xs].reshape(-1, 3))
        if deep is not None:
            # bilinear sampling of the coarser deep grid at the pixel's position (pixel centres aligned)
            h = deep.shape[1]
            fy = np.clip((ys + 0.5) * h / s - 0.5, 0, h - 1)
            fx = np.clip((xs + 0.5) * h / s - 0.5, 0, h - 1)
            y0, x0 = np.floor(fy).astype(int), np.floor(fx).astype(int)
            y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, h - 1)
            wy, wx = (fy - y0)[..., None], (fx - x0)[..., None]
            v = (deep[bi, y0, x0] * (1 - wy) * (1 - wx) + deep[bi, y0, x1] * (1 - wy) * wx
                 + deep[bi, y1, x0] * wy * (1 - wx) + deep[bi, y1, x1] * wy * wx)
            deeps.append(v.reshape(-1, deep.shape[-1]))
    return np.concatenate(labs).astype(np.float32), (np.concatenate(deeps).astype(np.float32) if deeps else None)


def fit_transform(lab: np.ndarray, deep: np.ndarray | None, cfg: LearnerConfig) -> tuple[FeatureTransform, np.ndarray]:
    """PCA of deep features, then standardise every column and weight the two blocks."""
    tf = FeatureTransform()
    cols = []
    weights = []
    if deep is not None:
        from sklearn.decomposition import PCA

        d = min(cfg.feature_dims, deep.shape[1], len(deep))
        pca = PCA(n_components=d, random_state=cfg.seed).fit(deep[: cfg.max_fit_pixels * 2])
        tf.pca_mean = pca.mean_.astype(np.float32)
        tf.pca_components = pca.components_.T.astype(np.float32)
        cols.append((deep - tf.pca_mean) @ tf.pca_components)
        weights += [cfg.feature_weight / np.sqrt(d)] * d
    cols.append(lab)
    weights += [cfg.color_weight / np.sqrt(3)] * 3
    x = np.concatenate(cols, 1)
    tf.mean = x.mean(0).astype(np.float32)
    std = x.std(0)
    if cfg.scale_mode == "block":  # one scale per block: keeps Lab's perceptual metric and PCA's variance ratios
        blocks = [slice(0, x.shape[1] - 3), slice(x.shape[1] - 3, x.shape[1])] if deep is not None else [slice(0, 3)]
        for b in blocks:
            std[b] = np.sqrt((std[b] ** 2).mean())
    tf.scale = (np.asarray(weights) / np.maximum(std, 1e-3 * max(float(std.max()), 1e-6))).astype(np.float32)
    return tf, ((x - tf.mean) * tf.scale).astype(np.float32)


def balanced_silhouette(x: np.ndarray, labels: np.ndarray, sample: int, seed: int) -> float:
    """Silhouette averaged per cluster first, then over clusters (each cluster counts once).

    Why: the plain silhouette is a pixel average, so it is ruled by the background and the largest parts;
    splitting off a thin or small but colour-distinct part (a separator, a washer) barely moves it, while
    splitting a big noisy region costs little. Averaging per cluster rewards a small distinct cluster as much
    as a big one and punishes any cluster that is split without a real boundary.
    """
    from sklearn.metrics import silhouette_samples

    rng = np.random.default_rng(seed)
    idx = rng.choice(len(x), min(sample, len(x)), replace=False)
    lab = labels[idx]
    if len(np.unique(lab)) < 2:
        return -1.0
    sil = silhouette_samples(x[idx], lab)
    return float(np.mean([sil[lab == c].mean() for c in np.unique(lab)]))


def min_color_distance(lab: np.ndarray, labels: np.ndarray, k: int, min_share: float,
                       image_of: np.ndarray | None = None, min_together: float = 0.3) -> float:
    """Smallest Lab distance between the mean colours of two clusters (-1 when a cluster is nearly empty).

    With ``image_of`` (the image index of every pixel), two clusters that rarely appear in the same image
    (together in < ``min_together`` of the images showing either) count as distance 0: they are one part
    that comes in different colours in different images (a yellow or a blue cable), not two parts.
    """
    counts = np.bincount(labels, minlength=k)
    if counts.min() < max(2, min_share * len(labels)):
        return -1.0
    means = np.stack([np.bincount(labels, weights=lab[:, c], minlength=k) for c in range(3)], 1) / counts[:, None]
    d = np.sqrt(((means[:, None] - means[None]) ** 2).sum(-1))
    if image_of is not None:
        n_img = int(image_of.max()) + 1
        per = np.zeros((n_img, k))
        np.add.at(per, (image_of, labels), 1)
        present = per >= np.maximum(2, 0.005 * per.sum(1, keepdims=True))
        both = present.T.astype(float) @ present
        shown = present.sum(0)
        either = shown[:, None] + shown[None] - both
        d[both < min_together * np.maximum(either, 1)] = 0.0
    d[np.diag_indices(k)] = np.inf
    return float(d.min())


def choose_k(x: np.ndarray, cfg: LearnerConfig, rng: np.random.Generator, tf=None,
             image_of: np.ndarray | None = None) -> tuple[int, dict[int, float]]:
    """Pick the number of clusters by silhouette (higher is better) or BIC (lower is better)."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score
    from sklearn.mixture import GaussianMixture

    pick = rng.choice(len(x), min(cfg.select_pixels, len(x)), replace=False)
    sub = x[pick]
    sub_img = None if image_of is None else image_of[pick]
    scores: dict[int, float] = {}
    for k in range(cfg.k_min, cfg.k_max + 1):
        if k >= len(sub):
            break
        if cfg.k_select == "bic":
            gm = GaussianMixture(k, covariance_type="diag", random_state=cfg.seed, reg_covar=1e-4).fit(sub)
            scores[k] = float(gm.bic(sub))
        else:
            km = KMeans(k, n_init=2, random_state=cfg.seed, max_iter=100).fit(sub)
            if len(np.unique(km.labels_)) < 2:
                continue
            if cfg.k_select == "distinct":
                lab = sub[:, -3:] / tf.scale[-3:] + tf.mean[-3:]  # raw (median-normalised) Lab
                scores[k] = min_color_distance(lab, km.labels_, k, cfg.split_min_share, sub_img)
            elif cfg.k_select == "balanced":
                scores[k] = balanced_silhouette(sub, km.labels_, min(3000, len(sub)), cfg.seed)
            else:
                scores[k] = float(silhouette_score(sub, km.labels_, sample_size=min(3000, len(sub)),
                                                   random_state=cfg.seed))
    if not scores:
        raise InputError("learner", "could not evaluate any K; images have too few distinct pixels")
    if cfg.k_select == "distinct":
        ok = [k for k, v in scores.items() if v >= cfg.k_distinct_de]
        if ok:
            return max(ok), scores
        cfg = cfg.replace(k_select="balanced")  # no K gives distinct colours: fall back to the silhouette
        return choose_k(x, cfg, rng, tf, image_of)
    best = min(scores, key=scores.get) if cfg.k_select == "bic" else max(scores, key=scores.get)
    return best, scores


NEAR_GREY_CHROMA = 10.0  # Lab chroma below which a colour has no hue to compare


def other_hue(centres: np.ndarray, cfg: LearnerConfig) -> bool:
    """Whether two Lab colours differ in hue (by ``split_hue_deg``), or one of them is near grey.

    Why: a part's lit and shaded sides share a hue and differ in saturation, and their chroma can lie as far apart
    as two parts' colours (a purple part's highlight against its body); a red cable and a pink rod differ in hue.
    """
    a, b = centres[:, 1], centres[:, 2]
    if float(np.hypot(a, b).min()) < NEAR_GREY_CHROMA:
        return True
    turn = abs(float(np.degrees(np.arctan2(b[0], a[0]) - np.arctan2(b[1], a[1]))))
    return min(turn, 360.0 - turn) >= cfg.split_hue_deg


def split_by_color(x: np.ndarray, labels: np.ndarray, centroids: np.ndarray, tf, cfg: LearnerConfig,
                   image_of: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Split clusters that hold two clearly different hues (2-means in Lab), up to ``k_max`` classes.

    Why: K-selection scores are ruled by the big classes, so two small parts of different colour (an orange
    and a lime) can share one cluster. A split is kept only when the two halves' chroma (a, b) lies at least
    ``split_delta_e`` apart, their hues differ where ``split_hue_deg`` asks it (``other_hue``), and they separate
    cleanly (Lab silhouette >= ``split_silhouette``). Lightness is left out and both default thresholds are high
    because shading on one part, blurred boundary pixels and one part that comes in several colours across images
    (a cable) all form weaker, lightness-driven pairs. A thin part's blurred edge pixels lie between its colour and
    the background's and pull down the silhouette of two thin parts of different colours (a red cable, a pink rod);
    a lower silhouette bar splits them, and the hue rule then keeps a part's saturated highlight with its body.
    Two halves that share few of the images showing either of them are one part in two colours and stay together
    (``min_color_distance``).
    """
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    lab = x[:, -3:] / tf.scale[-3:] + tf.mean[-3:]  # raw (median-normalised) Lab of the fit pixels
    cents = [c for c in centroids]
    labels = labels.copy()
    splits = 0
    queue = list(range(len(cents)))
    while queue and len(cents) < cfg.k_max:
        c = queue.pop(0)
        idx = np.flatnonzero(labels == c)
        if len(idx) < max(50, int(cfg.split_min_share * len(x))) * 2:
            continue
        sub = idx[np.random.default_rng(cfg.seed).permutation(len(idx))[:4000]]
        km = KMeans(2, n_init=2, random_state=cfg.seed).fit(lab[sub])
        d = float(np.linalg.norm(km.cluster_centers_[0, 1:] - km.cluster_centers_[1, 1:]))  # chroma (a, b) only
        share = np.bincount(km.labels_, minlength=2).min() / len(x) * len(idx) / len(sub)
        if d < cfg.split_delta_e or share < cfg.split_min_share or not other_hue(km.cluster_centers_, cfg):
            continue
        if image_of is not None and min_color_distance(lab[sub], km.labels_, 2, 0.0, image_of[sub]) == 0.0:
            continue  # the two colours never share an image: one part in two colours, not two parts
        sil = silhouette_score(lab[sub], km.labels_, sample_size=min(1500, len(sub)), random_state=cfg.seed)
        if sil < cfg.split_silhouette:
            continue
        part = km.predict(lab[idx])
        new = len(cents)
        cents[c] = x[idx[part == 0]].mean(0)
        cents.append(x[idx[part == 1]].mean(0))
        labels[idx[part == 1]] = new
        splits += 1
        queue += [c, new]
    return np.stack(cents).astype(np.float32), splits


def learn_components(images: np.ndarray, cfg: LearnerConfig | None = None, backbone=None,
                     where: str = "training images") -> ComponentModel:
    """Learn a ComponentModel from normal images [N,H,W,3] uint8 (any common size; resized to image_size)."""
    from sklearn.cluster import KMeans

    cfg = cfg or LearnerConfig()
    images = check_images(images, where)
    if len(images) < MIN_TRAIN_IMAGES:
        raise InputError(where, f"only {len(images)} training image(s); component learning needs at least "
                                f"{MIN_TRAIN_IMAGES}")
    images = resize_square(images, cfg.image_size)
    rng = np.random.default_rng(cfg.seed)
    if backbone is None:
        backbone = build_backbone_for(cfg)
    fz = PixelFeaturizer(cfg, backbone)
    lab, deep = _sample_pixels(images, fz, cfg, rng)
    if float(lab.std(0).max()) < 1.0:
        raise InputError(where, "images are uniform (colour spread < 1 Lab unit); there are no components to learn")
    tf, x = fit_transform(lab, deep, cfg)
    fit_idx = rng.choice(len(x), min(cfg.max_fit_pixels, len(x)), replace=False)
    fit_x = x[fit_idx]
    image_of = fit_idx // (len(x) // len(images))  # _sample_pixels takes the same number from every image
    scores: dict[int, float] = {}
    if cfg.k:
        k = cfg.k
    elif cfg.k_min == cfg.k_max:
        k = cfg.k_min
    else:
        k, scores = choose_k(fit_x, cfg, rng, tf, image_of)
    km = KMeans(k, n_init=3, random_state=cfg.seed, max_iter=200).fit(fit_x)
    centroids = km.cluster_centers_.astype(np.float32)
    splits = 0
    if cfg.split_delta_e > 0 and not cfg.k:
        centroids, splits = split_by_color(fit_x, km.labels_, centroids, tf, cfg, image_of)
    model = ComponentModel(cfg, centroids, tf, backbone_source=getattr(backbone, "source", "none"),
                           backbone=backbone)
    model = _relabel(model, images, rng)
    model.meta.update({"k_scores": {str(kk): v for kk, v in scores.items()}, "n_train": int(len(images)),
                       "color_splits": int(splits)})
    if cfg.instances:
        _fit_instances(model, images, rng)
    if hasattr(backbone, "fingerprint"):
        model.meta["backbone_fingerprint"] = backbone.fingerprint()
    counts = model.meta["class_pixel_share"]
    if len([c for c in counts[1:] if c > 0]) == 0:
        raise InputError(where, "no foreground component found: every pixel falls into the background class")
    return model


def counterpart(model: ComponentModel, images: np.ndarray) -> ComponentModel:
    """The same colour classes with the instance stage toggled: fitted on ``images`` (training normals) when
    ``model`` has none, dropped when it has one. The pixel stage (centroids, transform, backbone) is shared."""
    meta = {k: v for k, v in model.meta.items() if k != "instances"}
    twin = ComponentModel(replace(model.cfg, instances=model.instance_stage is None), model.centroids,
                          model.transform, model.backbone_source, meta, model._backbone)
    if model.instance_stage is None:
        images = resize_square(check_images(images, "training images"), model.cfg.image_size)
        _fit_instances(twin, images, np.random.default_rng(model.cfg.seed))
    else:  # the stored shares are the instance classes'
        twin.meta.pop("class_pixel_share", None)
    return twin


def _fit_instances(model: ComponentModel, images: np.ndarray, rng: np.random.Generator) -> None:
    """Fit the instance stage on (a bounded sample of) the training images, then number its classes by share."""
    from comgen.components.instances import fit_stage

    cfg = model.cfg
    pick = np.sort(rng.choice(len(images), min(cfg.instance_fit_images, len(images)), replace=False))
    sel = images[pick]
    maps, labs, deeps = [], [], []
    bs = max(1, cfg.batch_size)
    for i in progress(range(0, len(sel), bs), desc="learn: instances", total=-(-len(sel) // bs)):
        m, lab, up = model.pixel_stage(sel[i:i + bs])
        maps.append(m)
        labs.append(lab)
        if up is not None:
            deeps.append(up)
    maps, labs = np.concatenate(maps), np.concatenate(labs)
    deeps = np.concatenate(deeps) if deeps else None
    stage, info = fit_stage(maps, labs, deeps, model.pixel_classes, cfg.instance_options(), cfg.seed)
    model.instance_stage = stage
    n = min(32, len(maps))  # the share of each class, from the features already computed
    final = np.stack([stage.refine(maps[j], labs[j], None if deeps is None else deeps[j]) for j in range(n)])
    share = np.bincount(final.ravel(), minlength=stage.num_classes) / final.size
    order = [0] + [int(c) for c in np.argsort(-share, kind="stable") if c != 0]
    stage.renumber(order)
    model.meta["class_pixel_share"] = [float(share[c]) for c in order]
    model.meta["instances"] = info


def _relabel(model: ComponentModel, images: np.ndarray, rng: np.random.Generator) -> ComponentModel:
    """Renumber classes: 0 = the class most frequent on the image border, then by pixel share (descending)."""
    sel = images[rng.choice(len(images), min(32, len(images)), replace=False)]
    maps = model.segment_working(sel)
    k = model.num_classes
    border = np.zeros(maps.shape[1:], bool)
    b = max(1, maps.shape[1] // 32)
    border[:b], border[-b:], border[:, :b], border[:, -b:] = True, True, True, True
    border_counts = np.bincount(maps[:, border].ravel(), minlength=k)
    share = np.bincount(maps.ravel(), minlength=k) / maps.size
    bg = int(border_counts.argmax())
    rest = [int(c) for c in np.argsort(-share) if c != bg]
    order = [bg] + rest
    model.centroids = model.centroids[order]
    model.meta["class_pixel_share"] = [float(share[c]) for c in order]
    return model


def load_images(samples, size: int) -> np.ndarray:
    """Read samples (via the data package) and resize them to the square working resolution."""
    import cv2

    if not samples:
        raise InputError("training set", "no training images")
    out = []
    for s in progress(samples, desc="learn: read"):
        im = s.load_image()
        out.append(cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA if im.shape[0] > size
                              else cv2.INTER_LINEAR))
    return np.stack(out)


def learn_into_run(run, samples, cfg: LearnerConfig | None = None, preview: int = 4) -> ComponentModel:
    """``comgen learn``'s work: learn from the train samples, save model + config + preview in RUN/components."""
    from comgen.components.preview import write_preview

    cfg = cfg or LearnerConfig()
    where = str(samples[0].path.parent) if samples else "training set"
    images = load_images(samples, cfg.image_size)
    model = learn_components(images, cfg, where=where)
    model.meta["train_ids"] = [s.image_id for s in samples]
    model.save(run.components)
    if preview > 0:  # preview=0 means "no preview PNG" (segmenting zero images would be an input error)
        write_preview(run.components / "preview.png", model, images, n=preview)
    run.mark_done("learn", cfg.hash(), {"components": str(run.components), "num_classes": model.num_classes})
    return model
