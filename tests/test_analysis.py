import pytest

from srn.analysis.imbalance import run_class_imbalance

# Two images; boxes as x y w h. The second image's face-less quirk line (0 0 0 0) is dropped.
BOXES = """a/one.jpg 1024 1024
3
100 100 40 50
500 300 120 150
900 900 8 10
b/two.jpg 800 600
1
0 0 0 0
"""


def test_anchor_counts_and_stc_share(tmp_path):
    path = tmp_path / "boxes.txt"
    path.write_text(BOXES)
    stats = run_class_imbalance(path, seed=0)
    assert stats["anchors_per_image_per_level"] == [131072, 32768, 8192, 2048, 512, 128]
    assert stats["anchors_per_image"] == 174720
    assert stats["stc_anchor_share"] == pytest.approx((131072 + 32768 + 8192) / 174720)
    assert stats["num_faces_file"] == 4 and stats["num_faces_degenerate"] == 1


def test_sparse_matching_equals_dense(tmp_path):
    path = tmp_path / "boxes.txt"
    path.write_text(BOXES)
    sparse = run_class_imbalance(path, seed=0, sparse=True)
    dense = run_class_imbalance(path, seed=0, sparse=False)
    assert sparse["counts_per_level"] == dense["counts_per_level"]
    assert sparse["ratios"] == dense["ratios"]


def test_real_train_boxes_sample(shared_dir):
    stats = run_class_imbalance(shared_dir / "data/widerface/wider_face_train_boxes_with_sizes.txt", num_images=50, seed=0)
    step2 = stats["ratios"]
    assert stats["num_images"] == 50
    # RetinaNet-style matching leaves thousands of negatives per positive (the paper: ~1:15441).
    ratio = next(v for k, v in step2.items() if k.startswith("step2_all"))
    assert ratio["negatives_per_positive"] > 1000
