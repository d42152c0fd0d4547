"""Privacy on a real crowd: `srn anonymize` at its defaults hides these faces of the world's largest selfie.

The faces are those that two frontier detectors agree on (SCRFD-2.5G and YOLOv8n-face, each at 0.5,
IoU 0.5; ``benchmarks/bench_privacy.py``), 24 px or more, and that the shipped model hides at
``srn anonymize``'s defaults (78 of 82 on 2026-12-06; RESULTS, "Privacy recall on the pixels written").
The photo is written as PNG first, so that a pixel the anonymiser did not touch is equal to the input's;
a face is hidden when at least 70% of the pixels of the ellipse inscribed in its box changed.
"""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest

from srn.cli import main
from tests.scripts import load_script

SELFIE = "data/demo/images/Tencent__data_worlds-largest-selfie.jpg"
privacy = load_script("benchmarks/bench_privacy.py")

# x1, y1, x2, y2 in the photo's pixels (1600 x 898). The grimacing man at the right (1301, 699) scored
# 0.19 against the old threshold of 0.2; the woman in the pink hijab (211, 686) is not found yet, so she
# is not pinned.
MUST_BE_HIDDEN = [
    (883, 690, 998, 824),
    (219, 619, 262, 669),
    (353, 740, 410, 806),
    (432, 711, 494, 791),
    (1113, 599, 1226, 735),
    (282, 698, 335, 765),
    (843, 561, 878, 605),
    (42, 680, 105, 748),
    (1356, 614, 1402, 673),
    (672, 622, 757, 711),
    (162, 583, 203, 630),
    (1241, 578, 1282, 626),
    (737, 524, 773, 564),
    (803, 537, 837, 575),
    (848, 517, 883, 558),
    (360, 574, 400, 617),
    (1017, 598, 1099, 704),
    (1495, 614, 1546, 676),
    (795, 636, 835, 685),
    (1448, 738, 1514, 812),
    (438, 604, 482, 663),
    (1402, 547, 1442, 592),
    (565, 602, 604, 651),
    (321, 605, 362, 654),
    (1188, 505, 1221, 550),
    (61, 565, 101, 610),
    (286, 823, 365, 895),
    (197, 554, 231, 596),
    (349, 647, 397, 703),
    (1261, 521, 1289, 555),
    (28, 524, 67, 567),
    (551, 466, 577, 497),
    (602, 521, 635, 560),
    (663, 548, 701, 596),
    (430, 550, 465, 593),
    (808, 594, 848, 642),
    (910, 472, 935, 505),
    (524, 557, 560, 602),
    (194, 500, 228, 540),
    (1498, 476, 1528, 512),
    (264, 604, 299, 651),
    (156, 738, 210, 803),
    (1301, 699, 1357, 760),
    (626, 580, 666, 626),
    (519, 624, 564, 672),
    (987, 519, 1018, 557),
    (444, 461, 470, 493),
    (305, 461, 330, 494),
    (72, 499, 107, 540),
    (1549, 496, 1580, 529),
    (1408, 492, 1442, 528),
    (1489, 558, 1530, 609),
    (134, 491, 166, 527),
    (485, 499, 515, 535),
    (1349, 515, 1385, 556),
    (775, 503, 805, 542),
    (501, 461, 527, 492),
    (933, 563, 965, 603),
    (1015, 541, 1052, 585),
    (6, 408, 32, 440),
    (1401, 609, 1437, 656),
    (392, 840, 461, 901),
    (120, 524, 152, 561),
    (1382, 707, 1434, 765),
    (1361, 435, 1385, 465),
    (1316, 577, 1351, 623),
    (1133, 500, 1162, 534),
    (342, 489, 371, 525),
    (535, 513, 565, 546),
    (949, 496, 978, 528),
    (1338, 553, 1375, 597),
    (1404, 458, 1432, 489),
    (960, 466, 985, 494),
    (1235, 497, 1262, 528),
    (975, 592, 1015, 641),
    (276, 440, 301, 473),
    (1578, 432, 1605, 465),
    (1419, 414, 1444, 443),
]


@pytest.mark.slow
def test_srn_anonymize_hides_the_pinned_faces_of_a_crowd(shared_dir, tmp_path, capsys):
    path = shared_dir / SELFIE
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    source = tmp_path / "selfie.png"
    with PIL.Image.open(path) as image:
        image.convert("RGB").save(source)
    out = tmp_path / "out"
    out.mkdir()
    assert main(["anonymize", str(source), "--out", str(out), "--device", "cpu", "--workers", "0"]) == 0
    before = np.asarray(PIL.Image.open(source).convert("RGB"))
    after = np.asarray(PIL.Image.open(out / "selfie.png").convert("RGB"))
    shares = privacy.hidden_share(before, after, np.asarray(MUST_BE_HIDDEN, dtype=np.float64))
    missed = [box for box, share in zip(MUST_BE_HIDDEN, shares) if share < 0.7]
    assert missed == []
