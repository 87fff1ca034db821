"""Every loss term on hand-made tensors with values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from comgen.detect.loss import LossConfig, csda_loss, dice_loss, focal_loss, image_bce_loss, smooth_l1_map_loss
from comgen.errors import ConfigError

LOGIT_09 = math.log(0.9 / 0.1)  # sigmoid = 0.9


def test_focal_gamma0_no_alpha_is_bce() -> None:
    logits = torch.tensor([[[[LOGIT_09, -LOGIT_09]]]])
    target = torch.tensor([[[[1.0, 1.0]]]])
    expected = (-math.log(0.9) - math.log(0.1)) / 2
    assert float(focal_loss(logits, target, gamma=0.0, alpha=-1)) == pytest.approx(expected, rel=1e-5)


def test_focal_down_weights_easy_pixels() -> None:
    logits = torch.tensor([[[[LOGIT_09]]]])
    target = torch.ones(1, 1, 1, 1)
    # gamma 2: -log(0.9) * (1 - 0.9)^2; alpha 0.75 on positives
    assert float(focal_loss(logits, target, gamma=2.0, alpha=0.75)) == pytest.approx(
        0.75 * -math.log(0.9) * 0.01, rel=1e-5)
    neg = torch.zeros(1, 1, 1, 1)
    assert float(focal_loss(-logits, neg, gamma=2.0, alpha=0.75)) == pytest.approx(
        0.25 * -math.log(0.9) * 0.01, rel=1e-5)


def test_dice_values() -> None:
    # image 0: p = 0.9 on the 2 target pixels, 0.1 on 2 others; image 1: empty target (ignored)
    logits = torch.tensor([[[[LOGIT_09, LOGIT_09], [-LOGIT_09, -LOGIT_09]]],
                           [[[5.0, 5.0], [5.0, 5.0]]]])
    target = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]], [[[0.0, 0.0], [0.0, 0.0]]]])
    inter, psum, tsum = 1.8, 2.0, 2.0
    expected = 1 - (2 * inter + 1.0) / (psum + tsum + 1.0)
    assert float(dice_loss(logits, target, eps=1.0)) == pytest.approx(expected, rel=1e-5)
    assert float(dice_loss(logits, torch.zeros_like(target))) == 0.0


def test_smooth_l1_values() -> None:
    logits = torch.tensor([[[[LOGIT_09, 0.0]]]])  # p = 0.9, 0.5
    target = torch.tensor([[[[1.0, 0.0]]]])
    beta = 0.2
    # |0.1| < beta: 0.5 * 0.01 / 0.2 = 0.025 ; |0.5| >= beta: 0.5 - 0.1 = 0.4
    assert float(smooth_l1_map_loss(logits, target, beta)) == pytest.approx((0.025 + 0.4) / 2, rel=1e-5)


def test_image_bce_values() -> None:
    logit = torch.tensor([LOGIT_09, LOGIT_09])
    label = torch.tensor([1.0, 0.0])
    assert float(image_bce_loss(logit, label)) == pytest.approx((-math.log(0.9) - math.log(0.1)) / 2, rel=1e-5)


def test_weighted_total_and_terms() -> None:
    torch.manual_seed(0)
    m = torch.randn(2, 1, 4, 4)
    t = (torch.rand(2, 1, 4, 4) > 0.5).float()
    g, y = torch.randn(2), torch.tensor([1.0, 0.0])
    total, terms = csda_loss(m, g, t, y, LossConfig())
    assert set(terms) == {"focal", "dice", "smooth_l1", "bce"}
    assert float(total) == pytest.approx(sum(terms.values()), rel=1e-5)
    only_bce, _ = csda_loss(m, g, t, y, LossConfig(focal=0, dice=0, smooth_l1=0, bce=2.0))
    assert float(only_bce) == pytest.approx(2 * terms["bce"], rel=1e-5)


def test_perfect_prediction_has_near_zero_loss() -> None:
    t = torch.zeros(1, 1, 4, 4)
    t[..., :2, :2] = 1
    m = (t * 2 - 1) * 20
    total, _ = csda_loss(m, torch.tensor([20.0]), t, torch.tensor([1.0]), LossConfig())
    assert float(total) < 1e-3


def test_gradients_flow_and_shape_check() -> None:
    m = torch.zeros(1, 1, 4, 4, requires_grad=True)
    g = torch.zeros(1, requires_grad=True)
    t = torch.zeros(1, 1, 4, 4)
    t[..., 0, 0] = 1
    total, _ = csda_loss(m, g, t, torch.ones(1), LossConfig())
    total.backward()
    assert float(m.grad[0, 0, 0, 0]) < 0 < float(m.grad[0, 0, 3, 3]) and float(g.grad) < 0
    with pytest.raises(ValueError):
        csda_loss(m, g, torch.zeros(1, 1, 8, 8), torch.ones(1), LossConfig())


def test_loss_config_validation() -> None:
    with pytest.raises(ConfigError):
        LossConfig.from_dict({"dice": -1})
