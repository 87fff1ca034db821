"""The fusion rule: candidates, the choice on validation data, standardisation."""

from __future__ import annotations

import numpy as np
import pytest

from comgen.detect.fusion import Fusion, candidates, choose_fusion
from comgen.errors import ArtifactError, ConfigError


def _validation(n_normal: int = 40, n_anom: int = 20, seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Three branches: ``network`` sees the anomalies well, ``prior`` a little, ``memory`` not at all."""
    rng = np.random.default_rng(seed)
    labels = np.r_[np.zeros(n_normal), np.ones(n_anom)].astype(int)
    z = {"network": rng.normal(size=len(labels)) + 3.0 * labels,
         "prior": rng.normal(size=len(labels)) + 0.8 * labels,
         "memory": rng.normal(size=len(labels)) * 3.0}
    return z, labels


def test_candidates_come_singles_first_then_sums_then_the_maximum() -> None:
    names = [c.name for c in candidates(["network", "prior", "memory"])]
    assert names == ["network", "prior", "memory", "network+prior", "network+memory", "prior+memory",
                     "network+prior+memory", "max(network,prior,memory)"]
    assert [c.name for c in candidates(["network"])] == ["network"]


def test_auto_keeps_the_informative_branch_and_is_never_below_the_best_single_one() -> None:
    for seed in range(5):
        z, labels = _validation(seed=seed)
        fusion, aurocs = choose_fusion(z, labels, "auto")
        singles = max(aurocs[b] for b in z)
        assert aurocs[fusion.name] >= singles - 0.005
        assert "memory" not in fusion.weights  # a branch at chance never makes it into the rule
    assert aurocs["max(network,prior,memory)"] < aurocs["network"]  # the fixed maximum loses the better branch


def test_fused_scores_are_standardised_on_the_validation_normals() -> None:
    z, labels = _validation()
    for how in ("auto", "max", "sum", "softplus", "prior"):
        fusion, _ = choose_fusion(z, labels, how)
        fused = fusion.apply(z)[labels == 0]
        assert abs(fused.mean()) < 1e-5 and abs(fused.std() - 1.0) < 1e-4
    assert choose_fusion(z, labels, "max")[0].rule == "max"
    assert choose_fusion(z, labels, "sum")[0].name == "network+prior+memory"
    assert choose_fusion(z, labels, "softplus")[0].name == "softplus(network,prior,memory)"


def test_without_held_out_anomalies_auto_sums_every_branch() -> None:
    z, labels = _validation()
    normal = {b: v[labels == 0] for b, v in z.items()}
    fusion, aurocs = choose_fusion(normal, np.zeros(40, int), "auto")
    assert fusion.name == "network+prior+memory" and set(aurocs.values()) == {None}


def test_bad_choices_are_one_line_errors() -> None:
    z, labels = _validation()
    with pytest.raises(ConfigError, match="must be one of"):
        choose_fusion(z, labels, "mean")
    with pytest.raises(ConfigError, match="not available"):
        choose_fusion({"network": z["network"]}, labels, "memory")


def test_round_trip_and_malformed_entries() -> None:
    z, labels = _validation()
    for how in ("sum", "softplus"):
        fusion, _ = choose_fusion(z, labels, how)
        back = Fusion.from_dict(fusion.to_dict())
        assert back.rule == fusion.rule
        np.testing.assert_allclose(back.apply(z), fusion.apply(z))
    for bad in (None, {"rule": "mean", "weights": {"network": 1}}, {"rule": "max", "weights": {"other": 1}},
                {"rule": "max", "weights": {"network": float("nan")}}, {"rule": "max", "weights": {"network": 1},
                                                                        "scale": 0.0},
                {"rule": "max", "weights": {"network": 1}, "cap": -1.0},
                {"rule": "max", "weights": {"network": 1}, "cap": True}):
        with pytest.raises(ArtifactError, match="fusion"):
            Fusion.from_dict(bad)
    with pytest.raises(ArtifactError, match="memory"):
        Fusion("weighted", {"memory": 1.0}).apply({"network": z["network"]})


def test_map_weights_follow_the_rule_and_skip_branches_without_maps() -> None:
    assert Fusion("weighted", {"network": 1.0, "memory": 3.0}).map_weights() == {"network": 0.25, "memory": 0.75}
    assert Fusion("weighted", {"prior": 1.0}).map_weights() == {}


def test_a_branch_with_a_heavy_tailed_normal_cannot_outvote_the_others() -> None:
    """Two branches see every anomaly; a third is noise whose model puts one normal image 300 units out (the
    composition prior on a random texture). Uncapped, that normal ranks above every anomaly."""
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(60), np.ones(30)].astype(int)
    z = {"network": rng.normal(size=90) + 10.0 * labels, "memory": rng.normal(size=90) + 15.0 * labels,
         "prior": rng.normal(size=90)}
    z["prior"][5] = 300.0
    top = lambda f: int(np.argmax(f.apply(z)))  # noqa: E731
    assert top(choose_fusion(z, labels, "sum")[0]) == 5
    capped, _ = choose_fusion(z, labels, "sum", cap=15.0)
    assert capped.cap == 15.0 and labels[top(capped)] == 1
    assert Fusion.from_dict(capped.to_dict()).cap == 15.0
    assert Fusion.from_dict({k: v for k, v in capped.to_dict().items() if k != "cap"}).cap == 0.0  # older files
    small = {b: np.clip(v, -14.0, 14.0) for b, v in z.items()}  # below the cap, nothing changes
    np.testing.assert_allclose(capped.raw(small), choose_fusion(z, labels, "sum")[0].raw(small))


def test_softplus_lets_a_branch_that_sees_nothing_add_about_zero() -> None:
    """One branch flags an image strongly; another finds it unusually normal. The sum cancels the evidence, the
    soft positive parts keep it; where no branch is negative, the two rules agree on the order."""
    z = {"network": np.array([0.0, 0.0, 6.0]), "prior": np.array([0.0, 0.0, -6.0])}
    total = Fusion("weighted", {"network": 1.0, "prior": 1.0}).raw(z)
    soft = Fusion("softplus", {"network": 1.0, "prior": 1.0}).raw(z)
    assert total[2] == total[0]  # the anomaly ties the normals under the sum
    assert soft[2] > soft[0] + 4.5
    np.testing.assert_allclose(soft[:2], 2 * np.log(2.0))  # log(1 + e^0) per branch
    big = {"network": np.array([1.0, 3.0, 8.0]), "prior": np.array([2.0, 4.0, 9.0])}
    order = np.argsort(Fusion("softplus", {"network": 1.0, "prior": 1.0}).raw(big))
    np.testing.assert_array_equal(order, np.argsort(Fusion("weighted", {"network": 1.0, "prior": 1.0}).raw(big)))


def test_softplus_respects_the_cap_and_is_the_default() -> None:
    from comgen.detect.config import DetectorConfig

    z = {"network": np.array([0.0, 300.0]), "prior": np.array([0.0, 0.0])}
    capped = Fusion("softplus", {"network": 1.0, "prior": 1.0}, cap=15.0).raw(z)
    assert abs(capped[1] - (np.log1p(np.exp(15.0)) + np.log(2.0))) < 1e-9
    assert DetectorConfig().fusion == "softplus"
