"""``srn convert``: the authors' ``SRN.pth`` into an srn checkpoint."""

from __future__ import annotations

import argparse

from srn.cli.common import HelpFormatter


def register(sub: argparse._SubParsersAction) -> None:
    convert = sub.add_parser(
        "convert", help="convert the authors' SRN.pth into an srn checkpoint", formatter_class=HelpFormatter,
        description="Convert the authors' SRN.pth (https://github.com/ChiCheng123/SRN, linked from its README) into an srn "
                    "checkpoint, which holds its config. srn detect --weights SRN.pth also reads it directly.",
    )
    convert.add_argument("src", help="the release's SRN.pth")
    convert.add_argument("dst", help="output checkpoint")
    convert.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from srn.weights import convert_official_file

    config = convert_official_file(args.src, args.dst)
    print(f"wrote {args.dst} ({config.model.backbone}, STC {list(config.model.stc_levels)}, STR {list(config.model.str_levels)})")
    return 0
