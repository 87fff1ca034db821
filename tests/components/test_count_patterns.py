import numpy as np
import pytest

from comgen.components.composition import vector_names
from comgen.components.count_patterns import CountPatterns, as_counts, count_columns


def _either_or(n: int = 40) -> np.ndarray:
    """Normal images with a disc or a cable, never both and never neither (two steady classes of their own), and a
    third class whose count varies freely from 0 to 4."""
    rng = np.random.default_rng(0)
    disc = rng.integers(0, 2, n)
    return np.stack([disc, 1 - disc, np.arange(n) % 5], 1)


def test_seen_patterns_score_zero_and_an_unseen_pair_scores_its_escape_surprise() -> None:
    train = _either_or()
    table = CountPatterns(train)
    assert (table.raw(train) == 0).all()
    both, neither = [1, 1, 2], [0, 0, 2]
    n, t = len(train), 2  # the disc-cable pair showed two patterns: (1, 0) and (0, 1)
    np.testing.assert_allclose(table.raw(np.array([both, neither])), np.log((n + t) / t))
    # every single count of both images was seen; only the pair tells them from the normals
    assert (CountPatterns(train, pairs=False).raw(np.array([both, neither])) == 0).all()


def test_a_new_count_of_a_steady_class_is_more_surprising_than_of_a_free_one() -> None:
    table = CountPatterns(_either_or())
    steady = table.raw(np.array([[2, 0, 2]]))[0]  # a count of 2 discs, never seen
    free = table.raw(np.array([[1, 0, 7]]))[0]  # a count of 7 for the class that showed five counts
    assert steady > free > 0


def test_leave_one_out_scores_only_the_patterns_one_image_showed_alone() -> None:
    train = np.array([[1, 0], [1, 0], [1, 0], [2, 0]])
    loo = CountPatterns(train).leave_one_out()
    assert (loo[:3] == 0).all()
    # held out, the last image's count of 2 is unseen among three images that showed one pattern
    assert loo[3] == pytest.approx(np.log((3 + 1) / 1))
    assert (CountPatterns(train[:1]).leave_one_out() == 0).all()  # one image: nothing to hold out against


def test_counts_are_read_from_the_composition_vector_as_integers() -> None:
    names = vector_names(3, 0)
    cols = count_columns(names)
    assert len(cols) == 2 and all(names[c].endswith(".count") for c in cols)
    vec = np.zeros((1, len(names)))
    vec[0, cols] = [2.0000001, np.nan]  # an absent class's count reads as 0
    assert as_counts(vec, cols).tolist() == [[2, 0]]
    assert as_counts(np.full((1, len(names)), 1e9), cols).max() < 1 << 16  # clipped: a pair stays one key


def test_no_classes_scores_nothing() -> None:
    table = CountPatterns(np.zeros((5, 0), np.int64))
    assert (table.raw(np.zeros((2, 0), np.int64)) == 0).all() and (table.leave_one_out() == 0).all()
