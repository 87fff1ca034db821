"""Composition prior: an image-level logical score from Stage I's component model and composition density.

Why: CSDA compares an image with its nearest normal references patch by patch. A *missing* or *extra* part at a
random layout leaves every patch looking normal (an empty spot exists in every reference), so the network alone
cannot see count errors, which are most logical anomalies. Stage I already segments images into components and
fits a density over normal compositions (counts, areas, positions, colours) for Low-Density Sampling; the
negative log-density of a test image's composition is exactly the evidence the network lacks. It needs no
anomalies, so it is fitted on the training normals and calibrated (z-score) on the validation normals; ``fusion.py``
decides how it joins the other branches.

Two component models see different compositions: the colour classes count parts of one colour together, while the
instance stage (``components/instances.py``) tells same-coloured part types apart but miscounts where it
confuses them. Neither is better on every category, and their errors are nearly independent, so by default the
prior also scores with the *counterpart* model (the same colour classes with the instance stage toggled) and
averages the two calibrated z-scores, standardised again on the validation normals: an ensemble of two density
models over two views of the same parts.

The colour learner's k-means depends on its seed: a part that covers a tiny share of the pixels gets a class of its
own in one draw and none in the next, and on some categories the prior's ranking of logical anomalies swings from
good to chance between seeds. With ``learner_seeds`` above 1 the prior learns that many component models, each with its
own seed and its counterpart, and averages their calibrated scores, standardised again on the validation normals.
It is off by default: it helped the development seeds but not the report seeds (docs/experiments.md).

The same composition vectors also give the fusion a second branch, ``counts``: the count patterns (per class and
per pair of classes, over both models) that no training normal showed (``components/count_patterns.py``). It is
calibrated on the training normals, each held out in turn, and the validation normals.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np
from safetensors.numpy import load_file, save_file

from comgen.components.composition import vector_names
from comgen.components.count_patterns import CountPatterns, as_counts, count_columns
from comgen.components.density import CompositionDensity, DensityConfig
from comgen.components.learner import counterpart
from comgen.components.model import ComponentModel
from comgen.config import ConfigBase
from comgen.detect.artifacts import RETRAIN, finite_number, read_json_object
from comgen.errors import ArtifactError, ConfigError, InputError
from comgen.io import atomic_path, atomic_write_json

PRIOR_DIR = "composition_prior"  # inside the detector directory
PARTNER_DIR = "partner"  # the counterpart model's prior, inside PRIOR_DIR
MEMBER_DIR = "seed"  # the priors of the other learner seeds, inside PRIOR_DIR: seed1, seed2, ...


@dataclass
class PriorDensityConfig(DensityConfig):
    """The prior's density options. Unlike the generator's low-density sampling, the prior also reads each class's
    size spread and the holes of its parts. A rule like "both rings have the same size" changes neither a class's
    count nor its total area when one part grows and the other shrinks. A rule that ties a cable's colour to a
    connector's number of slots is broken by a connector with other slots, which may change nothing but its class's
    holes (both chosen on the development data; docs/experiments.md)."""

    area_spread: bool = True
    holes: bool = True


@dataclass
class PriorConfig(ConfigBase):
    """Whether the composition prior runs, and how it segments and models compositions."""

    # ``fuse`` moved to ``detector.fusion``, which chooses the rule on validation data
    RETIRED_OPTIONS: ClassVar[dict[str, Any]] = {"fuse": "max"}

    enabled: bool = True  # used when the run has a component model (compositional / diffusion back-ends)
    partner: bool = True  # also score with the counterpart component model and average (see the module docstring)
    learner_seeds: int = 1  # component models learnt with different seeds, each with its partner, averaged
    counts: bool = True  # also score the count patterns no training normal showed (the fusion's ``counts`` branch)
    batch_size: int = 16  # images segmented at once (bounds memory at the learner's working size)
    density: PriorDensityConfig = field(default_factory=PriorDensityConfig)

    def __post_init__(self) -> None:
        for name in ("batch_size", "learner_seeds"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"detector.prior.{name}", f"must be an integer >= 1, got {v!r}")


class CompositionPrior:
    """Component model + composition density + validation calibration; ``score(images)`` gives z-scores."""

    def __init__(self, model: Any, density: CompositionDensity, cfg: PriorConfig, train_vectors: np.ndarray,
                 mean: float = 0.0, std: float = 1.0, partner: CompositionPrior | None = None,
                 pair_mean: float = 0.0, pair_std: float = 1.0, members: list[CompositionPrior] | None = None,
                 ensemble_mean: float = 0.0, ensemble_std: float = 1.0, counts: CountPatterns | None = None,
                 counts_mean: float = 0.0, counts_std: float = 1.0) -> None:
        self.model = model
        self.density = density
        self.cfg = cfg
        self.train_vectors = train_vectors
        self.mean = mean
        self.std = std
        self.partner = partner  # the counterpart model's prior, or None (a single model)
        self.pair_mean = pair_mean  # the averaged z's spread on the validation normals
        self.pair_std = pair_std
        self.members = members or []  # the priors of the models learnt with the other seeds (each with its partner)
        self.ensemble_mean = ensemble_mean  # the members' averaged z's spread on the validation normals
        self.ensemble_std = ensemble_std
        self.counts = counts  # the count patterns of this model's and the partner's training vectors, or None
        self.counts_mean = counts_mean  # their raw scores' spread on the held-out training and validation normals
        self.counts_std = counts_std

    # --- scoring ------------------------------------------------------------------------------------------------
    @staticmethod
    def vectors(model: Any, density: CompositionDensity, images: np.ndarray, batch_size: int = 16,
                deep: np.ndarray | None = None, maps: np.ndarray | None = None) -> np.ndarray:
        """Composition vectors [N,D] of uint8 images [N,H,W,3] (segmented in batches at the learner's size).

        ``deep``: the learner's backbone features of these images, when the caller has them already; ``maps``:
        their class maps (``segment_maps``), when the caller has segmented them already.
        """
        shape = images.shape[1:3]
        out = []
        for i in range(0, len(images), batch_size):
            chunk = images[i:i + batch_size]
            cmaps = segment_maps(model, chunk, None if deep is None else deep[i:i + batch_size]) if maps is None \
                else maps[i:i + batch_size]
            for cmap, img in zip(cmaps, chunk):
                if cmap.shape != img.shape[:2]:
                    cmap = cv2.resize(cmap, img.shape[1::-1], interpolation=cv2.INTER_NEAREST)
                out.append(density.vector(model.compose(img, "", class_map=cmap).components, shape))
        return np.stack(out) if out else np.zeros((0, 0))

    def vectors_of(self, images: np.ndarray, deep: np.ndarray | None = None, maps: np.ndarray | None = None
                   ) -> np.ndarray:
        """``vectors`` with this prior's model and density."""
        return self.vectors(self.model, self.density, np.asarray(images), self.cfg.batch_size, deep, maps)

    def nll(self, images: np.ndarray, deep: np.ndarray | None = None, maps: np.ndarray | None = None
            ) -> np.ndarray:
        """Negative composition log-density of each image (higher = rarer composition)."""
        return -self.density.score(self.vectors_of(images, deep, maps))

    def segment(self, images: np.ndarray, deep: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray | None]:
        """Class maps at the learner's size of this model and of the partner (None without one, or when the
        partner has a pixel stage of its own and segments for itself), from one pass of the shared pixel stage."""
        return segment_pair(self.model, None if self.partner is None else self.partner.model, images,
                            self.cfg.batch_size, deep)

    def score(self, images: np.ndarray, deep: np.ndarray | None = None, maps: np.ndarray | None = None,
              partner_maps: np.ndarray | None = None) -> np.ndarray:
        """Calibrated scores: z of the negative log-density relative to the validation normals, averaged with the
        partner's when there is one, then with the members' (each segments for itself). ``maps`` and
        ``partner_maps`` are this seed's two models' class maps (``segment``); when neither is given, both come from
        one segmentation, and a partner without maps segments for itself."""
        return self.score_branches(images, deep, maps, partner_maps)[0]

    def score_branches(self, images: np.ndarray, deep: np.ndarray | None = None, maps: np.ndarray | None = None,
                       partner_maps: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """``score``, and the count patterns' calibrated scores (None without them), from one set of composition
        vectors."""
        if maps is None and partner_maps is None:
            maps, partner_maps = self.segment(images, deep)
        vecs = self.vectors_of(images, deep, maps)
        z = self.z(-self.density.score(vecs))
        partner_vecs = None
        if self.partner is not None:
            partner_vecs = self.partner.vectors_of(images, deep, partner_maps)
            z = self.pair(z, self.partner.z(-self.partner.density.score(partner_vecs)))
        if self.members:
            z = self.ensemble([z, *[m.score(images, deep) for m in self.members]])
        counts = None if self.counts is None else self.counts_z(self.counts.raw(self.count_matrix(vecs, partner_vecs)))
        return z, counts

    def count_matrix(self, vectors: np.ndarray, partner_vectors: np.ndarray | None) -> np.ndarray:
        """The per-class counts [N, K] of this model's composition vectors, then of the partner's."""
        blocks = [as_counts(vectors, count_columns(self.names()))]
        if self.partner is not None and partner_vectors is not None:
            blocks.append(as_counts(partner_vectors, count_columns(self.partner.names())))
        return np.hstack(blocks)

    def names(self) -> list[str]:
        """The column names of this prior's composition vectors."""
        return _vector_names(self.model, self.cfg.density)

    def counts_z(self, raw: np.ndarray) -> np.ndarray:
        """The count patterns' raw scores -> calibrated scores."""
        return ((raw - self.counts_mean) / self.counts_std).astype(np.float32)

    def ensemble(self, zs: list[np.ndarray]) -> np.ndarray:
        """The seeds' calibrated scores (this model's first) -> the ensemble's calibrated score."""
        return ((np.mean(zs, 0) - self.ensemble_mean) / self.ensemble_std).astype(np.float32)

    def pair(self, z: np.ndarray, partner_z: np.ndarray) -> np.ndarray:
        """This model's and the partner's calibrated scores -> the ensemble's calibrated score."""
        return (((z + partner_z) / 2 - self.pair_mean) / self.pair_std).astype(np.float32)

    def z(self, nll: np.ndarray) -> np.ndarray:
        """Negative log-densities -> calibrated scores (for callers that already hold the ``nll``)."""
        return ((nll - self.mean) / self.std).astype(np.float32)

    # --- fitting ------------------------------------------------------------------------------------------------
    @classmethod
    def fit(cls, model: Any, train_images: np.ndarray, val_images: np.ndarray | None = None,
            cfg: PriorConfig | None = None, train_maps: np.ndarray | None = None) -> CompositionPrior:
        """Fit the density on the training normals and calibrate on held-out normals (or later, ``calibrate``)."""
        cfg = cfg or PriorConfig()
        density = CompositionDensity(cfg.density, model.num_classes, model.background)
        vecs = cls.vectors(model, density, np.asarray(train_images), cfg.batch_size, maps=train_maps)
        density.fit(vecs)
        prior = cls(model, density, cfg, vecs)
        if val_images is not None and len(val_images):
            prior.calibrate(prior.nll(val_images))
        return prior

    def calibrate(self, normal_nll: np.ndarray) -> None:
        self.mean, self.std = _spread(normal_nll)

    def fit_partner(self, twin: ComponentModel, train_images: np.ndarray, val_images: np.ndarray,
                    normal: np.ndarray, val_z: np.ndarray, train_maps: np.ndarray | None = None,
                    val_maps: np.ndarray | None = None) -> np.ndarray:
        """Fit and calibrate the counterpart model's (``twin``'s) prior on the same images, then standardise the
        average on the validation normals (``normal``: their mask). ``train_maps`` and ``val_maps``: the twin's
        class maps of those images, when the caller segmented them with this model's (``segment_pair``).
        Returns the ensemble's validation scores."""
        partner = CompositionPrior.fit(twin, train_images, cfg=replace(self.cfg, partner=False), train_maps=train_maps)
        nll = partner.nll(val_images, maps=val_maps)
        partner.calibrate(nll[normal])
        partner_z = partner.z(nll)
        self.partner = partner
        self.pair_mean, self.pair_std = _spread(((val_z + partner_z) / 2)[normal])
        return self.pair(val_z, partner_z)

    def fit_counts(self, val_images: np.ndarray, normal: np.ndarray, maps: np.ndarray | None = None,
                   partner_maps: np.ndarray | None = None) -> np.ndarray:
        """Fit the count patterns on the training vectors of this model and of the partner (fitted first), and
        calibrate them on the training normals, each held out in turn, and the validation normals (``normal``: their
        mask). ``maps`` and ``partner_maps``: the two models' class maps of the validation images, when the caller has
        them. Returns the validation scores."""
        partner_train = None if self.partner is None else self.partner.train_vectors
        table = CountPatterns(self.count_matrix(self.train_vectors, partner_train))
        partner_val = None if self.partner is None else self.partner.vectors_of(val_images, maps=partner_maps)
        raw = table.raw(self.count_matrix(self.vectors_of(val_images, maps=maps), partner_val))
        self.counts = table
        self.counts_mean, self.counts_std = _spread(np.concatenate([table.leave_one_out(), raw[normal]]))
        return self.counts_z(raw)

    @classmethod
    def fit_seed(cls, model: ComponentModel, twin: ComponentModel | None, train_images: np.ndarray,
                 val_images: np.ndarray, normal: np.ndarray, cfg: PriorConfig
                 ) -> tuple[CompositionPrior, np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]:
        """One learner seed's prior: ``model``'s (paired with ``twin``'s, its counterpart, when given; one pixel pass
        segments each image for both) fitted on the training normals and calibrated on the validation normals
        (``normal``: their mask). Returns the prior, its validation scores, its count patterns' validation scores
        (None when ``cfg.counts`` is off), and ``model``'s class maps of the training and validation images."""
        bank, twin_bank = segment_pair(model, twin, train_images, cfg.batch_size)
        val, twin_val = segment_pair(model, twin, val_images, cfg.batch_size)
        prior = cls.fit(model, train_images, cfg=cfg, train_maps=bank)
        nll = prior.nll(val_images, maps=val)
        prior.calibrate(nll[normal])
        z = prior.z(nll)
        if twin is not None:
            z = prior.fit_partner(twin, train_images, val_images, normal, z, twin_bank, twin_val)
        counts = prior.fit_counts(val_images, normal, val, twin_val) if cfg.counts else None
        return prior, z, counts, bank, val

    def fit_members(self, seeds: list[int], train_images: np.ndarray, val_images: np.ndarray, normal: np.ndarray,
                    val_z: np.ndarray, log: Callable[[str], None] = print) -> np.ndarray:
        """Learn a component model for each of ``seeds`` on the training normals (this model's learner settings,
        sharing its backbone) and fit its prior (``fit_seed``, with a counterpart when this prior has one);
        standardise the average of all seeds' scores on the validation normals. ``val_z``: this seed's validation
        scores. Returns the ensemble's validation scores."""
        from comgen.components.learner import learn_components

        zs = [val_z]
        for seed in seeds:
            log(f"learning the composition prior's component model with seed {seed}")
            model = learn_components(train_images, replace(self.model.cfg, seed=seed), backbone=self.model._backbone)
            twin = counterpart_or_none(model, train_images, log) if self.partner is not None else None
            member, z, _, _, _ = CompositionPrior.fit_seed(model, twin, train_images, val_images, normal,
                                                           replace(self.cfg, learner_seeds=1, counts=False))
            self.members.append(member)
            zs.append(z)
        self.ensemble_mean, self.ensemble_std = _spread(np.mean(zs, 0)[normal])
        return self.ensemble(zs)

    # --- persistence --------------------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Self-contained: a copy of the component model, the training vectors, config and calibration.

        The mixture is refitted from the saved vectors at load time (deterministic, milliseconds), which keeps the
        files plain tensors + JSON instead of a pickled scikit-learn object.
        """
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.model.save(d / "components")
        with atomic_path(d / "vectors.safetensors") as tmp:
            save_file({"train": np.ascontiguousarray(self.train_vectors, np.float64)}, str(tmp))
        self.cfg.save(d / "config.yaml")
        cal = {"mean": self.mean, "std": self.std, "num_classes": self.model.num_classes,
               "background": self.model.background}
        if self.partner is not None:
            self.partner.save(d / PARTNER_DIR)
            cal["pair"] = {"mean": self.pair_mean, "std": self.pair_std}
        elif (d / PARTNER_DIR).is_dir():  # an earlier fit's counterpart: the folder holds only what is used
            shutil.rmtree(d / PARTNER_DIR)
        for i, member in enumerate(self.members, 1):
            member.save(d / f"{MEMBER_DIR}{i}")
        stale = len(self.members) + 1
        while (d / f"{MEMBER_DIR}{stale}").is_dir():  # the seeds of an earlier fit with more of them
            shutil.rmtree(d / f"{MEMBER_DIR}{stale}")
            stale += 1
        if self.members:
            cal["ensemble"] = {"mean": self.ensemble_mean, "std": self.ensemble_std, "members": len(self.members)}
        if self.counts is not None:  # the table is rebuilt from the saved training vectors at load
            cal["counts"] = {"mean": self.counts_mean, "std": self.counts_std, "pairs": self.counts.pairs}
        atomic_write_json(d / "calibration.json", cal)
        return d

    @classmethod
    def load(cls, directory: str | Path, backbone: Any = None) -> CompositionPrior:
        """Read a saved prior; a missing or corrupt file, or a bad number (inf vectors, NaN mean, zero std), is one
        ArtifactError naming the file."""
        d = Path(directory)
        for name in ("vectors.safetensors", "config.yaml", "calibration.json"):
            if not (d / name).is_file():
                raise ArtifactError(d / name, "missing; retrain the detector (`comgen train`)")
        cfg = PriorConfig.load(d / "config.yaml")
        cal = read_json_object(d / "calibration.json")
        mean = finite_number(cal.get("mean"), d / "calibration.json", "mean")
        std = finite_number(cal.get("std"), d / "calibration.json", "std", gt=0.0)
        pair = cal.get("pair")
        partner, pair_mean, pair_std = None, 0.0, 1.0
        if pair is not None:
            if not isinstance(pair, dict):
                raise ArtifactError(d / "calibration.json", f"pair must be an object, got {type(pair).__name__}; "
                                                            f"{RETRAIN}")
            pair_mean = finite_number(pair.get("mean"), d / "calibration.json", "pair.mean")
            pair_std = finite_number(pair.get("std"), d / "calibration.json", "pair.std", gt=0.0)
            partner = cls.load(d / PARTNER_DIR, backbone=backbone)
        members, ens_mean, ens_std = [], 0.0, 1.0
        ens = cal.get("ensemble")
        if ens is not None:
            n = ens.get("members") if isinstance(ens, dict) else None
            if not isinstance(n, int) or isinstance(n, bool) or n < 1:
                raise ArtifactError(d / "calibration.json", f"ensemble must hold a member count >= 1, got {ens!r}; "
                                                            f"{RETRAIN}")
            ens_mean = finite_number(ens.get("mean"), d / "calibration.json", "ensemble.mean")
            ens_std = finite_number(ens.get("std"), d / "calibration.json", "ensemble.std", gt=0.0)
            members = [cls.load(d / f"{MEMBER_DIR}{i}", backbone=backbone) for i in range(1, n + 1)]
        vecs = _read_vectors(d / "vectors.safetensors")
        model = ComponentModel.load(d / "components", backbone=backbone)
        density = CompositionDensity(cfg.density, model.num_classes, model.background)
        width = len(_vector_names(model, cfg.density))
        if vecs.shape[1] != width:  # e.g. a prior saved before its config gained a feature that now defaults on
            raise ArtifactError(d / "vectors.safetensors", f"{vecs.shape[1]} features per image, where config.yaml "
                                                           f"asks for {width}; {RETRAIN}")
        density.fit(vecs)
        prior = cls(model, density, cfg, vecs, mean, std, partner, pair_mean, pair_std, members, ens_mean, ens_std)
        counts = cal.get("counts")
        if counts is not None:
            if not isinstance(counts, dict) or not isinstance(counts.get("pairs"), bool):
                raise ArtifactError(d / "calibration.json", f"counts must be an object with pairs true or false, got "
                                                            f"{counts!r}; {RETRAIN}")
            prior.counts_mean = finite_number(counts.get("mean"), d / "calibration.json", "counts.mean")
            prior.counts_std = finite_number(counts.get("std"), d / "calibration.json", "counts.std", gt=0.0)
            partner_train = None if partner is None else partner.train_vectors
            prior.counts = CountPatterns(prior.count_matrix(vecs, partner_train), counts["pairs"])
        return prior


def segment_maps(model: Any, images: np.ndarray, deep: np.ndarray | None = None, batch_size: int = 16
                 ) -> np.ndarray:
    """Class maps [N,S,S] at the component model's working size, in batches (bounded memory)."""
    return segment_views(model, images, (), batch_size, deep)[0]


def segment_views(model: ComponentModel, images: np.ndarray, twins: tuple[ComponentModel, ...] = (),
                  batch_size: int = 16, deep: np.ndarray | None = None) -> list[np.ndarray]:
    """``segment_maps`` of ``model`` and of each twin (``ComponentModel.segment_views``: one pass of the shared
    pixel stage), in batches."""
    images = np.asarray(images)
    batches = [model.segment_views(images[i:i + batch_size], None if deep is None else deep[i:i + batch_size],
                                   twins) for i in range(0, len(images), batch_size)]
    if not batches:
        return [np.zeros((0,) + images.shape[1:3], np.uint8) for _ in range(1 + len(twins))]
    return [np.concatenate([b[v] for b in batches]) for v in range(1 + len(twins))]


def segment_pair(model: ComponentModel, twin: ComponentModel | None, images: np.ndarray, batch_size: int = 16,
                 deep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Class maps of ``model`` and of ``twin`` from one pass of the shared pixel stage. The twin's are None without
    a twin, or when its pixel stage differs (it then segments for itself)."""
    twins = (twin,) if twin is not None and model.shares_pixel_stage(twin) else ()
    views = segment_views(model, images, twins, batch_size, deep)
    return views[0], (views[1] if twins else None)


def counterpart_or_none(model: ComponentModel, train_images: np.ndarray, log: Callable[[str], None] = print
                        ) -> ComponentModel | None:
    """The prior's second component model (``learner.counterpart``), or None, logged, when it cannot be learnt
    from these images (then one model scores)."""
    try:
        return counterpart(model, train_images)
    except InputError as exc:
        log(f"composition prior: no counterpart model ({exc}); one model scores")
        return None


def _vector_names(model: Any, density: DensityConfig) -> list[str]:
    """The column names of the composition vectors that ``model`` and the density settings give."""
    return vector_names(model.num_classes, model.background, density.grid, density.area_spread, density.holes)


def _spread(values: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of calibration scores (1 where they do not vary)."""
    mean = float(np.mean(values))
    sd = float(np.std(values)) if len(values) > 1 else 0.0
    return mean, sd if sd > 1e-6 else 1.0


def _read_vectors(path: Path) -> np.ndarray:
    """The training composition vectors the density is refitted from: a non-empty [N, D] array without inf."""
    try:
        vecs = load_file(str(path))["train"]
    except Exception as exc:  # a damaged header raises safetensors' own error type
        raise ArtifactError(path, f"composition prior is unreadable ({exc.__class__.__name__}); {RETRAIN}") from None
    if vecs.ndim != 2 or not len(vecs):
        raise ArtifactError(path, f"expected a non-empty [N, D] array, got shape {vecs.shape}; {RETRAIN}")
    bad = int(np.isinf(vecs).sum())
    if bad:  # NaN is a valid entry (a part absent from the image), inf never is
        raise ArtifactError(path, f"{bad} infinite value(s) in the training vectors; {RETRAIN}")
    return vecs
