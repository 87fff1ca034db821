"""Low-Density Sampling in token-embedding space: variants of a learned component token from a Gaussian's tail.

Why: a learned token <c_k> reproduces its component as seen in normal images; embeddings a few standard
deviations away (a Mahalanobis *shell*, not the whole tail, so they stay recognisably "that part") render the
same part with an unusual colour, size or texture. The Gaussian is fitted to the token's training trajectory
(its late snapshots) with a perturbation floor, diagonal because there are far fewer snapshots than dimensions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from comgen.errors import ArtifactError


@dataclass
class TokenGaussian:
    mean: np.ndarray  # [D]
    var: np.ndarray  # [D] diagonal covariance

    @classmethod
    def fit(cls, trajectory: np.ndarray, final: np.ndarray, perturb_scale: float = 0.05) -> TokenGaussian:
        """Spread from the last half of the trajectory around the final embedding, floored by a perturbation."""
        final = np.asarray(final, np.float64)
        d = final.shape[0]
        floor = (perturb_scale * np.linalg.norm(final) / np.sqrt(d)) ** 2
        traj = np.asarray(trajectory, np.float64).reshape(-1, d)
        tail = traj[len(traj) // 2:]
        var = ((tail - final) ** 2).mean(0) if len(tail) >= 2 else np.zeros(d)
        return cls(final, np.maximum(var, max(floor, 1e-12)))

    def mahalanobis(self, x: np.ndarray) -> np.ndarray:
        x = np.atleast_2d(x)
        return np.sqrt((((x - self.mean) ** 2) / self.var).sum(-1))

    def shell_radii(self, shell: tuple[float, float]) -> tuple[float, float]:
        from scipy.stats import chi2

        d = self.mean.shape[0]
        return float(np.sqrt(chi2.ppf(shell[0], d))), float(np.sqrt(chi2.ppf(shell[1], d)))

    def sample_shell(self, rng: np.random.Generator, shell: tuple[float, float]) -> tuple[np.ndarray, float]:
        """One sample whose Mahalanobis radius is uniform between the chi-square quantiles ``shell``."""
        lo, hi = self.shell_radii(shell)
        u = rng.standard_normal(self.mean.shape[0])
        r = float(rng.uniform(lo, hi))
        return self.mean + np.sqrt(self.var) * u / np.linalg.norm(u) * r, r


class TokenSampler:
    """One Gaussian per learned token; keeps shell samples that stay nearer their own token than any other."""

    def __init__(self, tokens: list[str], final: np.ndarray, trajectory: np.ndarray | None,
                 perturb_scale: float = 0.05) -> None:
        self.tokens = list(tokens)
        self.final = np.asarray(final, np.float64)
        traj = np.zeros((0,) + self.final.shape) if trajectory is None else np.asarray(trajectory, np.float64)
        self.gaussians = [TokenGaussian.fit(traj[:, k], self.final[k], perturb_scale) for k in range(len(self.tokens))]

    @classmethod
    def load(cls, directory: str | Path, tokens: list[str], final: np.ndarray, perturb_scale: float) -> TokenSampler:
        path = Path(directory) / "trajectory.safetensors"
        traj = None
        if path.is_file():
            from safetensors.numpy import load_file

            try:
                traj = load_file(str(path))["trajectory"]
            except (OSError, KeyError, ValueError) as exc:
                raise ArtifactError(path, f"unreadable trajectory ({exc.__class__.__name__})") from None
            if traj.shape[1:] != np.shape(final):
                traj = None  # learned with another token set: fall back to perturbation only
        return cls(tokens, final, traj, perturb_scale)

    def is_anomalous(self, k: int, x: np.ndarray, shell: tuple[float, float]) -> bool:
        """In (or beyond) token k's shell, and still closer (in k's metric) to k than to every other token."""
        g = self.gaussians[k]
        lo, _ = g.shell_radii(shell)
        own = float(g.mahalanobis(x)[0])
        others = np.delete(self.final, k, axis=0)
        if len(others) and (g.mahalanobis(others) <= own).any():
            return False
        return own >= lo * 0.999

    def sample(self, k: int, rng: np.random.Generator, shell: tuple[float, float],
               tries: int = 8) -> tuple[np.ndarray, float] | None:
        for _ in range(max(1, tries)):
            x, r = self.gaussians[k].sample_shell(rng, shell)
            if self.is_anomalous(k, x, shell):
                return x, r
        return None
