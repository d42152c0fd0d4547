import torch
from torch.testing import assert_close

from srn.anchors import AnchorGenerator, cell_anchors, feature_sizes_for_image

# The release's table (docs/design.md, Anchors), cell (0, 0) of every level. For stride s: w0 = round(sqrt(s^2/1.25)),
# h0 = round(1.25*w0); e.g. s=4: w0 = round(3.578) = 4, h0 = 5; scale 2 gives 8x10 around c=1.5:
# (1.5-3.5, 1.5-4.5, 1.5+3.5, 1.5+4.5) = (-2, -3, 5, 6).
RELEASE_TABLE = torch.tensor(
    [
        [[-2, -3, 5, 6], [-3.6569, -5.0711, 6.6569, 8.0711]],
        [[-3, -5, 10, 12], [-5.8995, -8.7279, 12.8995, 15.7279]],
        [[-6, -10, 21, 25], [-11.799, -17.4558, 26.799, 32.4558]],
        [[-13, -20, 44, 51], [-25.0122, -34.9117, 56.0122, 65.9117]],
        [[-25, -39, 88, 102], [-48.6102, -68.4092, 111.6102, 131.4092]],
        [[-50, -78, 177, 205], [-97.2203, -136.8183, 224.2203, 263.8183]],
    ],
    dtype=torch.float64,
)


def test_cell_anchors_equal_the_release_table():
    for level in range(6):
        assert_close(cell_anchors(4 * 2**level), RELEASE_TABLE[level], atol=1e-4, rtol=0)


def test_grid_anchors_shift_row_major_with_scales_adjacent():
    gen = AnchorGenerator()
    anchors = gen.grid_anchors([(2, 3)] * 6, torch.device("cpu"))
    level0 = anchors[0]
    assert level0.shape == (2 * 3 * 2, 4)
    base = RELEASE_TABLE[0].float()
    # cell (row 1, column 2) is the 6th cell: index (1*3+2)*2 = 10, shifted by (2*4, 1*4)
    assert_close(level0[10:12], base + torch.tensor([8.0, 4.0, 8.0, 4.0]), atol=1e-4, rtol=0)
    assert_close(level0[2:4], base + torch.tensor([4.0, 0.0, 4.0, 0.0]), atol=1e-4, rtol=0)
    level5 = anchors[5]
    assert_close(level5[2], RELEASE_TABLE[5][0].float() + torch.tensor([128.0, 0.0, 128.0, 0.0]), atol=1e-4, rtol=0)


def test_anchors_are_cached_per_size_and_device():
    gen = AnchorGenerator()
    first = gen.grid_anchors([(5, 7)] * 6, torch.device("cpu"))
    again = gen.grid_anchors([(5, 7)] * 6, torch.device("cpu"))
    other = gen.grid_anchors([(5, 8)] * 6, torch.device("cpu"))
    assert first[0] is again[0]
    assert other[0] is not first[0]


def test_feature_sizes_follow_ceil_division():
    assert feature_sizes_for_image(1024, 1024) == [(256, 256), (128, 128), (64, 64), (32, 32), (16, 16), (8, 8)]
    assert feature_sizes_for_image(97, 131) == [(25, 33), (13, 17), (7, 9), (4, 5), (2, 3), (1, 2)]
