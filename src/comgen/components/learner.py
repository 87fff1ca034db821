"""Multi-Component Learning on the CPU: k-means on per-pixel (deep + Lab) features across all normal images.

Why this way (design doc, "Multi-Component Learning"; ComAD): normal images of one category share a small set of
part classes; clustering pixels across *all* images binds each cluster to one part class, so the same part
gets the same class id (token) in every image. K is picked by silhouette (or BIC) on a pixel subsample. The
background is the class that dominates the image border; foreground classes are numbered by pixel share.
"""

from __future__ import annotations

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
    tf.scale = (np.asarray(weights) / np.maximum(std, 1e-3 * max(float(std.max()), 1e-6))).astype(np.float32)
    return tf, ((x - tf.mean) * tf.scale).astype(np.float32)


def choose_k(x: np.ndarray, cfg: LearnerConfig, rng: np.random.Generator) -> tuple[int, dict[int, float]]:
    """Pick the number of clusters by silhouette (higher is better) or BIC (lower is better)."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score
    from sklearn.mixture import GaussianMixture

    sub = x[rng.choice(len(x), min(cfg.select_pixels, len(x)), replace=False)]
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
            scores[k] = float(silhouette_score(sub, km.labels_, sample_size=min(3000, len(sub)),
                                               random_state=cfg.seed))
    if not scores:
        raise InputError("learner", "could not evaluate any K; images have too few distinct pixels")
    best = min(scores, key=scores.get) if cfg.k_select == "bic" else max(scores, key=scores.get)
    return best, scores


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
    fit_x = x[rng.choice(len(x), min(cfg.max_fit_pixels, len(x)), replace=False)]
    scores: dict[int, float] = {}
    if cfg.k:
        k = cfg.k
    elif cfg.k_min == cfg.k_max:
        k = cfg.k_min
    else:
        k, scores = choose_k(fit_x, cfg, rng)
    km = KMeans(k, n_init=3, random_state=cfg.seed, max_iter=200).fit(fit_x)
    centroids = km.cluster_centers_.astype(np.float32)
    model = ComponentModel(cfg, centroids, tf, backbone_source=getattr(backbone, "source", "none"),
                           backbone=backbone)
    model = _relabel(model, images, rng)
    model.meta.update({"k_scores": {str(kk): v for kk, v in scores.items()}, "n_train": int(len(images))})
    if hasattr(backbone, "fingerprint"):
        model.meta["backbone_fingerprint"] = backbone.fingerprint()
    counts = model.meta["class_pixel_share"]
    if len([c for c in counts[1:] if c > 0]) == 0:
        raise InputError(where, "no foreground component found: every pixel falls into the background class")
    return model


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
    write_preview(run.components / "preview.png", model, images, n=preview)
    run.mark_done("learn", cfg.hash(), {"components": str(run.components), "num_classes": model.num_classes})
    return model
