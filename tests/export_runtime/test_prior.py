"""The mixture density from exported parameters equals scikit-learn's ``score_samples``; segmentation and vectors
equal the component model's."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from comgen.components.density import CompositionDensity, DensityConfig
from comgen.components.features import LearnerConfig
from comgen.components.learner import learn_components
from comgen.export_runtime.prior import composition_vectors, mixture_log_density, pair_z, segment_working
from tests.detect.conftest import toy_image


@pytest.mark.parametrize("kind", ["full", "tied", "diag", "spherical"])
def test_mixture_log_density_matches_sklearn(kind: str) -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 5))
    x[::7, 2] = np.nan  # an absent part: imputed
    d = CompositionDensity(DensityConfig(covariance_type=kind, n_components=2), 3).fit(x)
    arrays = {"fill": d.fill, "mu": d.mu, "sd": d.sd, "gmm_weights": d.gmm.weights_, "gmm_means": d.gmm.means_,
              "gmm_precisions_cholesky": d.gmm.precisions_cholesky_}
    q = rng.normal(size=(6, 5)) * 2
    q[0, 1] = np.nan
    np.testing.assert_allclose(mixture_log_density(q, arrays, kind), d.score(q), rtol=1e-10, atol=1e-9)


def test_segmentation_and_vectors_match_the_component_model() -> None:
    rng = np.random.default_rng(4)
    images = np.stack([toy_image(rng, 64, k)[0] for k in ("good", "missing", "extra", "good")])
    cfg = LearnerConfig(image_size=48, k=3, backbone_weights="random", pixels_per_image=300, max_fit_pixels=6000,
                        select_pixels=2000)
    model = learn_components(np.stack([toy_image(rng, 64)[0] for _ in range(8)]), cfg)
    tf = model.transform
    arrays = {"centroids": model.centroids, "mean": tf.mean, "scale": tf.scale, "pca_mean": tf.pca_mean,
              "pca_components": tf.pca_components}
    fz = model._featurizer()
    got = segment_working(images, arrays, cfg, None, fz.deep)
    want = model.segment_working(images)
    assert (got != want).mean() < 1e-3  # argmin ties at float rounding at most
    vec = composition_vectors(images, want, model.num_classes, cfg.min_area, 2)
    d = CompositionDensity(DensityConfig(), model.num_classes)
    full = [cv2.resize(m, (64, 64), interpolation=cv2.INTER_NEAREST) for m in want]
    ref = np.stack([d.vector(model.compose(im, "", class_map=m).components, (64, 64)) for im, m in zip(images, full)])
    np.testing.assert_array_equal(np.isnan(vec), np.isnan(ref))
    np.testing.assert_allclose(np.nan_to_num(vec), np.nan_to_num(ref))


def test_segmentation_with_the_instance_stage_matches_the_component_model() -> None:
    from tests.components.test_instances import _scenes

    train, _ = _scenes(12, 5, pale=True)
    test, _ = _scenes(3, 6, pale=True)
    cfg = LearnerConfig(image_size=96, k=2, backbone_weights="random", pixels_per_image=300, max_fit_pixels=6000,
                        select_pixels=2000, instances=True)
    model = learn_components(train, cfg)
    assert model.instance_stage is not None and model.num_classes > model.pixel_classes
    tf = model.transform
    arrays = {"centroids": model.centroids, "mean": tf.mean, "scale": tf.scale, "pca_mean": tf.pca_mean,
              "pca_components": tf.pca_components}
    got = segment_working(test, arrays, cfg, None, model._featurizer().deep, model.instance_stage)
    want = model.segment_working(test)
    assert (got != want).mean() < 1e-3


def test_the_pair_of_two_priors_is_their_standardised_mean() -> None:
    """``pair_z`` mirrors ``CompositionPrior.pair``."""
    from comgen.detect.composition_prior import CompositionPrior

    z, other = np.array([0.0, 1.0, 4.0]), np.array([2.0, -1.0, 6.0])
    prior = CompositionPrior(None, None, None, np.zeros((1, 1)), pair_mean=0.5, pair_std=2.0)
    np.testing.assert_allclose(pair_z(z, other, {"mean": 0.5, "std": 2.0}), prior.pair(z, other))
    np.testing.assert_allclose(pair_z(z, other, {"mean": 0.5, "std": 2.0}), [0.25, -0.25, 2.25])
