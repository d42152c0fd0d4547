"""Weight-space interpolation of a fine-tune with the model it started from (WiSE-FT, Wortsman et al.,
CVPR 2022): each floating-point tensor becomes ``base + alpha * (tuned - base)``; the written checkpoint
carries ``tuned``'s configuration (its postprocess included, or with ``--base-calibration`` the base's
score calibration). Integer buffers are ``tuned``'s.

A residual block that ``tuned`` added (an adapter or a context block, ``model.adapter_levels`` and
``model.context_levels``; at the identity in the base) has its residual scaled by ``alpha``: its last,
linear layer's weight and bias times ``alpha``, the rest as tuned, so that the block computes
``x + alpha * f(x)``. The model shipped on 2026-12-07 (evening) was made so::

    git show a9ef70a:srn/assets/srn_mobilenet_v2.pt > .gpu/stage5.pt
    python experiments/interpolate_weights.py --base .gpu/stage5.pt \
        --tuned runs/default_crowd_level0_adapter/model.pt --alpha 0.85 --base-calibration --out Y.pt
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import torch

from srn.errors import SRNError
from srn.weights import load_model, save_checkpoint


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="the checkpoint the fine-tune started from")
    parser.add_argument("--tuned", required=True, help="the fine-tuned checkpoint (same architecture)")
    parser.add_argument("--alpha", type=float, required=True, help="0 gives the base, 1 the fine-tune")
    parser.add_argument("--base-calibration", action="store_true", help="keep the base's score calibration")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if not 0.0 <= args.alpha <= 1.0:
        parser.error(f"--alpha must be from 0 to 1, got {args.alpha}")
    try:
        base, base_config = load_model(args.base)
        tuned, config = load_model(args.tuned)
    except SRNError as exc:
        parser.error(str(exc))
    start, end = base.state_dict(), tuned.state_dict()
    added = {prefix: block for prefix, block in tuned.residual_blocks().items() if prefix not in base.residual_blocks()}
    new = {k for k in end if k.startswith(tuple(added))}
    if start.keys() != end.keys() - new:
        parser.error(f"{args.base} and {args.tuned} are not the same architecture (apart from new residual blocks)")
    mixed = {k: start[k] + args.alpha * (end[k] - start[k]) if end[k].is_floating_point() else end[k] for k in start}
    changed = sorted(k for k in end if k in new or not torch.equal(start[k], mixed[k]))
    tuned.load_state_dict(mixed, strict=False)  # the new blocks keep their tuned weights...
    for block in added.values():
        block.scale_residual_(args.alpha)  # ... and compute x + alpha * f(x)
    if args.base_calibration:
        config = replace(config, postprocess=replace(config.postprocess, score_scale=base_config.postprocess.score_scale,
                                                     score_shift=base_config.postprocess.score_shift))
    print(f"{len(changed)} tensors differ from {args.base}: {', '.join(changed)}")
    save_checkpoint(tuned, config, args.out)


if __name__ == "__main__":
    main()
