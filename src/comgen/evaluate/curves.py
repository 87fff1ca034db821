"""Piecewise-linear curves (ROC, PRO, sPRO) and their area up to an FPR limit.

Why a class of its own: every metric here is "area under a curve up to FPR = limit, divided by limit",
computed the way MVTec's official scripts do it (trapezoids, linear interpolation at the limit), so the
integration lives in one place and is tested once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Curve:
    """Points (x = false-positive rate, y = TPR / PRO / sPRO), x non-decreasing, from (0, 0) to (1, y_end)."""

    x: np.ndarray
    y: np.ndarray

    def __post_init__(self) -> None:
        if self.x.shape != self.y.shape or self.x.ndim != 1 or self.x.size < 2:
            raise ValueError("a curve needs two 1-D arrays of the same length >= 2")

    def auc(self, limit: float = 1.0, normalise: bool = True) -> float:
        """Area under the curve for x in [0, limit]; divided by ``limit`` when ``normalise``."""
        area = auc_up_to(self.x, self.y, limit)
        # Rounded to 1e-10 so that float summation noise (0.99999999999999) does not leak into reports.
        return round(float(area / limit) if normalise else float(area), 10)

    def simplified(self) -> Curve:
        """Drop repeated points and interior points of horizontal/vertical runs (the area is unchanged)."""
        x, y = self.x, self.y
        keep = np.ones(x.size, dtype=bool)
        keep[1:] = (x[1:] != x[:-1]) | (y[1:] != y[:-1])
        x, y = x[keep], y[keep]
        if x.size > 2:
            inner = np.ones(x.size, dtype=bool)
            flat_x = (x[:-2] == x[1:-1]) & (x[1:-1] == x[2:])
            flat_y = (y[:-2] == y[1:-1]) & (y[1:-1] == y[2:])
            inner[1:-1] = ~(flat_x | flat_y)
            x, y = x[inner], y[inner]
        if x.size == 1:  # a curve that never moves still needs two points
            x, y = np.repeat(x, 2), np.repeat(y, 2)
        return Curve(x, y)

    def for_plot(self, max_points: int = 400) -> dict[str, list[float]]:
        """A light copy for plots and JSON: points picked on an x-grid that is dense on [0, 0.3], where
        PRO / sPRO are read (picking by index would starve that range when most points lie at high FPR)."""
        x, y = self.x, self.y
        if x.size > max_points:
            half = max(max_points // 2, 2)
            grid = np.concatenate((np.linspace(0.0, 1.0, half), np.linspace(0.0, 0.3, half)))
            idx = np.clip(np.searchsorted(x, grid, side="right") - 1, 0, x.size - 1)
            idx = np.unique(np.concatenate((idx, [0, x.size - 1])))
            x, y = x[idx], y[idx]
        return {"x": [round(float(v), 6) for v in x], "y": [round(float(v), 6) for v in y]}


def auc_up_to(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoidal area of the piecewise-linear curve (x, y) over [0, limit], interpolating at ``limit``.

    ``x`` must be non-decreasing. Matches the ``trapz(..., x_max=limit)`` of MVTec's evaluation code.
    """
    if not limit > 0:
        raise ValueError(f"integration limit must be > 0, got {limit}")
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.size < 2 or x[0] >= limit:
        return 0.0
    x0, x1, y0, y1 = x[:-1], x[1:], y[:-1], y[1:]
    use = x0 < limit
    x0, x1, y0, y1 = x0[use], x1[use], y0[use], y1[use]
    xe = np.minimum(x1, limit)
    width = x1 - x0
    frac = np.divide(xe - x0, width, out=np.ones_like(width), where=width > 0)
    ye = y0 + (y1 - y0) * frac
    return float(np.sum((xe - x0) * (y0 + ye)) * 0.5)
