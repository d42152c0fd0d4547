"""Weight-space interpolation of a fine-tune with the model it started from (WiSE-FT, Wortsman et al.,
CVPR 2022): each floating-point tensor becomes ``base + alpha * (tuned - base)``; the written checkpoint
carries ``tuned``'s configuration (its postprocess included). Integer buffers are ``tuned``'s.

    python experiments/interpolate_weights.py --base srn/assets/srn_mobilenet_v2.pt --tuned X.pt --alpha 0.5 --out Y.pt
"""

from __future__ import annotations

import argparse

import torch

from srn.errors import SRNError
from srn.weights import load_model, save_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="the checkpoint the fine-tune started from")
    parser.add_argument("--tuned", required=True, help="the fine-tuned checkpoint (same architecture)")
    parser.add_argument("--alpha", type=float, required=True, help="0 gives the base, 1 the fine-tune")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    try:
        base, _ = load_model(args.base)
        tuned, config = load_model(args.tuned)
    except SRNError as exc:
        parser.error(str(exc))
    start, end = base.state_dict(), tuned.state_dict()
    if start.keys() != end.keys():
        parser.error(f"{args.base} and {args.tuned} are not the same architecture")
    mixed = {k: start[k] + args.alpha * (end[k] - start[k]) if end[k].is_floating_point() else end[k] for k in end}
    changed = sorted(k for k in end if not torch.equal(start[k], mixed[k]))
    print(f"{len(changed)} tensors differ from {args.base}: {', '.join(changed)}")
    tuned.load_state_dict(mixed)
    save_checkpoint(tuned, config, args.out)


if __name__ == "__main__":
    main()
