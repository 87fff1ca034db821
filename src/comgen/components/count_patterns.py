"""Count patterns: which part counts per class, and which pairs of counts, the normal training images showed.

Why: many logical rules are discrete facts about counts: exactly three squares, a ring for every polygon, a disc or
a cable but never both and never neither, at least one rod. The composition prior's Gaussian mixture smooths counts
into a continuous density, so a pair of counts that no normal image shows (both parts, where every normal image
has one or the other) can still lie inside its ellipsoids. A table of the patterns that the training normals
showed finds such a pair directly. This follows CSAD's component histograms (Hsieh and Lai, BMVC 2024): a test
image's composition is compared with a memory of normal compositions. Here the memory is kept per class and per
pair of classes, so that the few normal images of a category cover it.

The score of an image is the largest surprise among the patterns that no training image showed, 0 when every
pattern was seen. The surprise is Witten-Bell's escape probability, log((N + T) / T), where N is the number of
training images and T the number of distinct patterns of that class or pair among them:
- a steady class (one count in every image, T = 1) makes a new count very surprising;
- a class whose count varies freely (large T) makes a new count barely surprising.
Only unseen patterns score. Normal images, whose patterns were almost all seen, therefore stay at 0 and add little
noise to the fused score.

Pure NumPy: the export runtime scores with these functions unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

COUNT_SUFFIX = ".count"  # the composition vector's per-class instance count (``composition.vector_names``)
_BASE = 1 << 16  # counts are clipped below this, so that a pair of counts is one integer key


def count_columns(names: Sequence[str]) -> np.ndarray:
    """Indices of the per-class instance counts among a composition vector's columns ``names``."""
    return np.array([i for i, n in enumerate(names) if n.endswith(COUNT_SUFFIX)], np.int64)


def as_counts(vectors: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """The integer counts [N, K] in ``columns`` of composition vectors [N, D] (an absent count reads as 0)."""
    x = np.atleast_2d(np.asarray(vectors, np.float64))[:, columns]
    return np.clip(np.rint(np.nan_to_num(x)), 0, _BASE - 1).astype(np.int64)


class CountPatterns:
    """The count patterns of the training normals: every class's count, and every pair of classes' counts."""

    def __init__(self, train: np.ndarray, pairs: bool = True) -> None:
        self.train = np.atleast_2d(np.asarray(train, np.int64))
        self.pairs = pairs
        k = self.train.shape[1]
        terms = [(i, i) for i in range(k)]
        if pairs:
            terms += [(i, j) for i in range(k) for j in range(i + 1, k)]
        self._first = np.array([a for a, _ in terms], np.int64)
        self._second = np.array([b for _, b in terms], np.int64)
        keys = self._keys(self.train)
        self._seen = [np.unique(keys[:, t], return_counts=True) for t in range(len(terms))]
        n = len(self.train)
        self._surprise = np.array([np.log((n + len(u)) / len(u)) for u, _ in self._seen])

    def _keys(self, counts: np.ndarray) -> np.ndarray:
        """[N, terms] one integer per pattern: a class's count (a term of one class) or a pair of counts."""
        c = np.clip(np.atleast_2d(np.asarray(counts, np.int64)), 0, _BASE - 1)
        return c[:, self._first] * _BASE + c[:, self._second]

    def raw(self, counts: np.ndarray) -> np.ndarray:
        """Uncalibrated scores [N] of count matrices [N, K]: the largest surprise of an unseen pattern, else 0."""
        keys = self._keys(counts)
        out = np.zeros(len(keys))
        for t, (seen, _) in enumerate(self._seen):
            pos = np.minimum(np.searchsorted(seen, keys[:, t]), len(seen) - 1)
            out = np.maximum(out, np.where(seen[pos] != keys[:, t], self._surprise[t], 0.0))
        return out

    def leave_one_out(self) -> np.ndarray:
        """Each training image's score against the table of the other training images.

        Why: the validation normals are few, and the rare patterns that single normal images show decide how often
        normal images score at all; the training images' own rates, each held out in turn, measure it.
        """
        n = len(self.train)
        out = np.zeros(n)
        if n < 2:
            return out
        keys = self._keys(self.train)
        for t, (seen, times) in enumerate(self._seen):
            alone = times[np.searchsorted(seen, keys[:, t])] == 1  # the image's pattern is its own alone
            others = len(seen) - 1  # the distinct patterns left when that image is held out
            if others >= 1:
                out = np.maximum(out, np.where(alone, np.log((n - 1 + others) / others), 0.0))
        return out
