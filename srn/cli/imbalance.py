"""``srn imbalance``: the paper's class-imbalance analysis on a WIDER boxes file (no network)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from srn.atomic import atomic_write_text
from srn.cli.common import HelpFormatter, int_at_least
from srn.paths import check_input_file, check_output_file

DESCRIPTION = """\
Anchors per level, the STC levels' share and each step's positive:negative ratio,
under the training geometry and matching (docs/design.md, "Class imbalance").

  srn imbalance wider_face_train_boxes_with_sizes.txt --num-images 500"""


def register(sub: argparse._SubParsersAction) -> None:
    imbalance = sub.add_parser("imbalance", help="the paper's class-imbalance analysis on a WIDER boxes file (no network)",
                               description=DESCRIPTION, formatter_class=HelpFormatter)
    imbalance.add_argument("boxes_file", help="lines '<event>/<name>.jpg W H', a count, then 'x y w h' lines")
    imbalance.add_argument("--num-images", type=int_at_least(1), default=None, help="a random sample of this many images (default: all)")
    imbalance.add_argument("--seed", type=int, default=0, help="seed of the sample and of the square crops")
    imbalance.add_argument("--low-quality", action="store_true", help="also make each face's best anchor positive")
    imbalance.add_argument("--batch-size", type=int_at_least(1), default=1, help="images matched together (the counts do not depend on it)")
    imbalance.add_argument("--dense", action="store_true", help="match every anchor (slow; same counts)")
    imbalance.add_argument("--json", help="also write the statistics as JSON")
    imbalance.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from srn.analysis.imbalance import format_report, run_class_imbalance

    check_input_file(args.boxes_file, "boxes file")
    if args.json:
        check_output_file(args.json, inputs=[args.boxes_file])
    stats = run_class_imbalance(args.boxes_file, num_images=args.num_images, seed=args.seed,
                                allow_low_quality_matches=args.low_quality, batch_size=args.batch_size,
                                sparse=not args.dense)
    print(format_report(stats))
    if args.json:
        atomic_write_text(Path(args.json), json.dumps(stats, indent=1, default=float) + "\n")
    return 0
