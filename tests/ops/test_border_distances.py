"""border_distances (C++ op) against a slow direct computation: every pixel's distance to every pixel
of every instance. The weight map built on it is tested in tests/test_weight_map.py."""
import math

import numpy as np
import torch

from tests.ops.op_contract import OpContract
from unet_fast.ops import border_distances


def direct_distances(instances: torch.Tensor, max_distance: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(d1, d2) by brute force: for each pixel the two smallest per-instance distances, inf beyond the cutoff."""
    maps = instances if instances.dim() == 3 else instances[None]
    d1, d2 = torch.full(maps.shape, math.inf, dtype=torch.float64), torch.full(maps.shape, math.inf, dtype=torch.float64)
    ys, xs = torch.meshgrid(torch.arange(maps.shape[1]), torch.arange(maps.shape[2]), indexing="ij")
    for n, ids in enumerate(maps):
        per_instance = []
        for instance in ids.unique().tolist():
            if instance == 0:
                continue
            py, px = (ids == instance).nonzero(as_tuple=True)
            squared = (ys[..., None] - py) ** 2 + (xs[..., None] - px) ** 2
            per_instance.append(squared.min(-1).values.double().sqrt())
        if per_instance:
            ranked = torch.stack(per_instance).sort(0).values
            d1[n] = ranked[0]
            if len(ranked) > 1:
                d2[n] = ranked[1]
    d1[d1 > max_distance], d2[d2 > max_distance] = math.inf, math.inf
    if instances.dim() == 2:
        d1, d2 = d1[0], d2[0]
    return d1.float(), d2.float()


def _instances(batch=2, height=12, width=15, seed=0):
    """Instance maps of a few rectangles (ids 1..4) on background 0."""
    generator = torch.Generator().manual_seed(seed)
    maps = torch.zeros(batch, height, width, dtype=torch.int64)
    for n in range(batch):
        for instance in range(1, 5):
            top, left = (int(v) for v in torch.randint(0, min(height, width) - 3, (2,), generator=generator))
            maps[n, top : top + 3, left : left + 3] = instance
    return maps


class TestBorderDistancesContract(OpContract):
    op_name = "border_distances"
    differentiable = False  # integer instance maps
    device = "cpu"
    float64_tolerance = {"rtol": 1e-6, "atol": 0}  # float32 square roots of exact integer squared distances

    def public(self, instances, max_distance):
        return border_distances(instances, max_distance)

    def sample_inputs(self, device, dtype):
        # dtype does not apply: instance maps are integers; a batch, a single map, and a short cutoff
        return [((_instances(), 100.0), {}), ((_instances(batch=1)[0].int(), 100.0), {}), ((_instances(seed=1), 2.5), {})]

    def reference(self, instances, max_distance):
        return direct_distances(instances, max_distance)

    def opcheck_args(self, device):
        return [(_instances(), 10.0), (_instances(seed=2).int(), 3.0)]

    def bad_inputs(self):
        return [
            (lambda: border_distances(np.zeros((3, 3), dtype=np.int64), -1.0), ValueError, "max_distance"),
            (lambda: border_distances(np.zeros((3, 3), dtype=np.int64), math.inf), ValueError, "max_distance"),
            (lambda: border_distances(torch.zeros(3, 3), 1.0), TypeError, "instances must have an integer dtype"),
            (lambda: border_distances(torch.zeros(1, 1, 3, 3, dtype=torch.int64), 1.0), ValueError,
             r"instances must be \(H, W\) or \(N, H, W\)"),
            (lambda: border_distances([[0, 1]], 1.0), TypeError, "instances must be a torch.Tensor or numpy array"),
        ]


def test_pixels_inside_an_instance_have_zero_first_distance():
    instances = _instances()
    d1, d2 = border_distances(instances, 100.0)
    assert torch.all(d1[instances > 0] == 0) and torch.all(d2[instances > 0] > 0)
