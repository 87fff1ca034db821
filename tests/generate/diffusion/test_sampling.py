"""Low-density token sampling and token-sequence edits (no diffusion model needed)."""

from __future__ import annotations

import numpy as np
import pytest

from comgen.generate.diffusion.editing import LD_TOKEN, plan_token_edit
from comgen.generate.diffusion.sampling import TokenGaussian, TokenSampler


def test_shell_samples_have_their_mahalanobis_radius():
    rng = np.random.default_rng(0)
    g = TokenGaussian(np.zeros(16), np.linspace(0.5, 2.0, 16))
    lo, hi = g.shell_radii((0.99, 0.999))
    radii = []
    for _ in range(50):
        x, r = g.sample_shell(rng, (0.99, 0.999))
        assert g.mahalanobis(x)[0] == pytest.approx(r)
        radii.append(r)
    assert lo <= min(radii) and max(radii) <= hi and lo > np.sqrt(16)  # beyond the typical radius


def test_gaussian_fits_trajectory_spread_with_floor():
    rng = np.random.default_rng(1)
    final = np.ones(8)
    traj = final + rng.normal(0, [0.5] * 4 + [0.0] * 4, (40, 8))
    g = TokenGaussian.fit(traj, final, perturb_scale=0.05)
    assert np.all(g.var[:4] > 0.1) and np.allclose(g.var[4:], (0.05 * np.linalg.norm(final) / np.sqrt(8)) ** 2)


def test_sampler_keeps_only_samples_nearer_their_own_token():
    final = np.array([[0.0, 0.0], [1.0, 0.0]])
    s = TokenSampler(["<c1>", "<c2>"], final, None, perturb_scale=2.0)
    rng = np.random.default_rng(0)
    assert not s.is_anomalous(0, final[0], (0.9, 0.99))  # the learned token itself is normal
    for _ in range(20):
        got = s.sample(0, rng, (0.9, 0.99), tries=50)
        if got is not None:
            x, _ = got
            assert s.gaussians[0].mahalanobis(final[1:])[0] > s.gaussians[0].mahalanobis(x)[0]


def test_token_edits():
    seq, cls = ["<c1>", "<c1>", "<c2>", "<bg>"], [1, 1, 2, 0]
    toks = {1: "<c1>", 2: "<c2>", 0: "<bg>"}
    rng = np.random.default_rng(0)
    rem = plan_token_edit("remove", seq, cls, [1, 2], toks, rng)
    assert len(rem.edited_seq) == 3 and rem.source_gate_pos and not rem.edited_gate_pos
    add = plan_token_edit("add", seq, cls, [1, 2], toks, rng)
    assert len(add.edited_seq) == 5 and add.edited_seq[add.edited_gate_pos[0]] == seq[add.target[0]]
    rep = plan_token_edit("replace", seq, cls, [1, 2], toks, rng)
    assert rep.edited_seq != seq and len(rep.classes) == 2 and rep.classes[0] != rep.classes[1]
    sw = plan_token_edit("swap", seq, cls, [1, 2], toks, rng)
    assert sorted(sw.edited_seq) == sorted(seq) and sw.edited_seq != seq
    rec = plan_token_edit("recolor", seq, cls, [1, 2], toks, rng)
    assert LD_TOKEN in rec.edited_seq
    assert plan_token_edit("swap", ["<c1>", "<bg>"], [1, 0], [1], toks, rng) is None
    assert plan_token_edit("remove", ["<bg>"], [0], [1, 2], toks, rng) is None
