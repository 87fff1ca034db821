import torch
import torch.nn.functional as F

from comgen.tensor_ops import norm_along, unit_along


def test_matches_torch_norms_over_a_channel_dimension() -> None:
    x = torch.randn(2, 3, 5, 4, 4)
    x[0, 0, :, 0, 0] = 0.0  # a zero vector stays zero, as with F.normalize
    for dim in (1, 2):
        assert torch.allclose(norm_along(x, dim), x.norm(dim=dim), atol=1e-6)
        assert torch.allclose(unit_along(x, dim), F.normalize(x, dim=dim), atol=1e-6)
    assert torch.equal(unit_along(x, 2)[0, 0, :, 0, 0], torch.zeros(5))
