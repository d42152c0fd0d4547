"""``srn train``: one GPU, the CPU, or many through torchrun."""

from __future__ import annotations

import argparse
from pathlib import Path

from srn.cli.common import HelpFormatter, UserError

PRESETS_DIR = Path(__file__).resolve().parent.parent / "configs"

DESCRIPTION = """\
Train SRN. CONFIG is a YAML file or a preset; key=value pairs override it.

Presets: srn_default (fine-tune the shipped model on your photos: its architecture, every tensor
loaded from it, score calibration refitted at the end), srn_lite (SRN-Lite, width 32), srn_mobilenet_v2,
srn_r50_widerface (the paper's), retinanet_r50_widerface, ablation_stc, ablation_str, ablation_stc_str.
data.train=FILE names one source (a WIDER-style list or a COCO .json, told from the file).

  srn train srn_default data.train=photos/labels.txt train.output_dir=runs/mine
  srn train srn_default data.train='[{annotations: coco.json, images: photos/}]'
  srn train srn_r50_widerface train.output_dir=runs/a
  torchrun --nproc_per_node=8 -m srn train srn_r50_widerface train.batch_per_device=4
  srn train my.yaml --resume"""


def register(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser("train", help="train SRN (one GPU, CPU, or many with torchrun)", description=DESCRIPTION,
                           formatter_class=HelpFormatter)
    train.add_argument("config", help="YAML file or preset name")
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. train.lr=0.02")
    train.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CKPT",
                       help="continue from CKPT (default: OUTPUT_DIR/last.pt, or from scratch when there is none)")
    train.set_defaults(func=run)


def resolve_config_path(name: str) -> tuple[Path, bool]:
    """A YAML path, or the name of a packaged preset; returns (path, is_preset)."""
    path = Path(name)
    if path.exists() or path.is_symlink() or path.suffix in (".yaml", ".yml") or "/" in name:
        return path, False  # a path: srn.config checks it and says what is wrong with it
    preset = PRESETS_DIR / f"{name.removesuffix('.yaml')}.yaml"
    if preset.is_file():
        return preset, True
    names = ", ".join(sorted(p.stem for p in PRESETS_DIR.glob("*.yaml")))
    raise UserError(f"{name}: no such config file or preset (presets: {names})")


def run(args: argparse.Namespace) -> int:
    import logging

    from srn.config import TrainingConfig, check_training_paths, load_yaml
    from srn.engine.trainer import Trainer

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    path, is_preset = resolve_config_path(args.config)
    config = load_yaml(TrainingConfig, path, args.overrides)
    check_training_paths(config)
    trainer = Trainer(config, base_dir=None if is_preset else path.parent, resume=args.resume)
    final = trainer.fit()
    if trainer.dist.is_main:
        print(f"wrote {final}")
    return 0
