"""Multi-scale deformable attention against a naive per-point bilinear loop (the definition, written out)."""

from __future__ import annotations

import math

import pytest
import torch

from segformer_tao.model.backbones.msda import MSDeformAttn, ms_deform_attn_core


def _naive(value, shapes, locations, weights):
    """For every (batch, query, head): sum over levels and points of weight * bilinear sample, zeros outside."""
    b, _, heads, c = value.shape
    _, lq, _, levels, points, _ = locations.shape
    starts = [0]
    for h, w in shapes:
        starts.append(starts[-1] + h * w)
    out = torch.zeros(b, lq, heads, c, dtype=torch.float64)
    for n in range(b):
        for q in range(lq):
            for m in range(heads):
                for lv, (h, w) in enumerate(shapes):
                    fmap = value[n, starts[lv]:starts[lv + 1], m].double().reshape(h, w, c)
                    for p in range(points):
                        x = locations[n, q, m, lv, p, 0].item() * w - 0.5
                        y = locations[n, q, m, lv, p, 1].item() * h - 0.5
                        x0, y0 = math.floor(x), math.floor(y)
                        sample = torch.zeros(c, dtype=torch.float64)
                        for xi, yi in ((x0, y0), (x0 + 1, y0), (x0, y0 + 1), (x0 + 1, y0 + 1)):
                            if 0 <= xi < w and 0 <= yi < h:
                                sample += (1 - abs(x - xi)) * (1 - abs(y - yi)) * fmap[yi, xi]
                        out[n, q, m] += weights[n, q, m, lv, p].item() * sample
    return out.reshape(b, lq, heads * c)


@pytest.mark.parametrize("precise", [False, True])
def test_core_matches_naive_loop(precise):
    g = torch.Generator().manual_seed(0)
    shapes = [(6, 5), (3, 4), (2, 1)]  # non-square, odd, and a one-pixel-wide level
    b, lq, heads, c, points = 2, 7, 3, 4, 3
    value = torch.randn(b, sum(h * w for h, w in shapes), heads, c, generator=g)
    # locations beyond [0, 1] exercise the zero padding at every border
    locations = torch.rand(b, lq, heads, len(shapes), points, 2, generator=g) * 1.6 - 0.3
    weights = torch.rand(b, lq, heads, len(shapes), points, generator=g)
    got = ms_deform_attn_core(value, shapes, locations, weights, precise=precise)
    want = _naive(value, shapes, locations, weights)
    assert got.shape == (b, lq, heads * c)
    assert (got.double() - want).abs().max().item() <= 1e-5


def test_module_precise_equals_grid_sample_and_gradients_flow():
    torch.manual_seed(0)
    attn = MSDeformAttn(d_model=32, n_levels=2, n_heads=4, n_points=2, ratio=0.5)
    with torch.no_grad():  # move off the init so offsets and weights depend on the query
        attn.sampling_offsets.weight.normal_(0, 0.5)
        attn.attention_weights.weight.normal_(0, 0.5)
    shapes = [(4, 6), (2, 3)]
    query = torch.randn(2, 5, 32, requires_grad=True)
    feat = torch.randn(2, 30, 32)
    ref = torch.rand(1, 5, 2, 2)
    out = attn(query, ref, feat, shapes)
    attn.precise = True
    out_precise = attn(query, ref, feat, shapes)
    assert out.shape == (2, 5, 32)
    assert (out - out_precise).abs().max().item() <= 1e-5
    out_precise.sum().backward()
    assert attn.sampling_offsets.weight.grad.abs().sum() > 0 and query.grad.abs().sum() > 0


def test_init_points_on_a_ring():
    attn = MSDeformAttn(d_model=16, n_levels=1, n_heads=4, n_points=2)
    bias = attn.sampling_offsets.bias.view(4, 1, 2, 2)
    # head 0 points along +x, head 1 along +y; point k sits k+1 pixels away
    assert torch.allclose(bias[0, 0], torch.tensor([[1.0, 0.0], [2.0, 0.0]]))
    assert torch.allclose(bias[1, 0], torch.tensor([[0.0, 1.0], [0.0, 2.0]]), atol=1e-6)
