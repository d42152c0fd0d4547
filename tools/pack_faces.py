"""Pack the project's real annotated face photos into a small training set with a fixed split.

Sources (``../shared/data``, see its README):
- the 150 WIDER FACE val images (``widerface/val_subset``), un-squashed back to their original aspect
  ratio with the boxes from ``labels_original.txt``;
- the 5,387 photos of ``faces/`` with ``faces/labels.txt``.

Every image is re-encoded as JPEG with its longer side at most ``--side`` pixels (``--wider-side``
for the WIDER images), and its boxes are
scaled to match. The held-out split is fixed: every 5th WIDER image (30 of 150) and every 12th photo
of each ``faces/`` source. Output: ``OUT/images/...`` and four WIDER-style lists
``OUT/{train,val}_{wider,faces}.txt`` (path, count, ``x y w h``), and the ``faces/`` lists once more per
source, ``OUT/{train,val}_faces_<source>.txt`` (the same split), so that a recipe can weight crowd
photos against portraits and the held-out protocol can report each source.

    python tools/pack_faces.py --shared ../shared --out .gpu/data --side 304 --quality 50 --wider-side 640
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

from PIL import Image

from srn.data.formats import parse_wider_file


def encode(image: Image.Image, side: int, quality: int) -> tuple[bytes, float]:
    scale = min(1.0, side / max(image.size))
    if scale < 1.0:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BILINEAR)
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=quality, optimize=True)
    return buffer.getvalue(), scale


def write_list(path: Path, entries: list[tuple[str, list[tuple[float, float, float, float]]]]) -> int:
    lines = []
    for name, boxes in entries:
        lines.append(name)
        lines.append(str(len(boxes)))
        lines.extend(f"{x:.1f} {y:.1f} {w:.1f} {h:.1f}" for x, y, w, h in boxes)
    path.write_text("\n".join(lines) + "\n")
    return sum(len(b) for _, b in entries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", default="../shared")
    parser.add_argument("--out", default=".gpu/data")
    parser.add_argument("--side", type=int, default=320)
    parser.add_argument("--quality", type=int, default=55)
    # WIDER faces are small; its 150 images keep more pixels (they were 416x416 already).
    parser.add_argument("--wider-side", type=int, default=640)
    args = parser.parse_args()
    data = Path(args.shared) / "data"
    out = Path(args.out)
    splits: dict[str, list] = {"train_wider": [], "val_wider": [], "train_faces": [], "val_faces": []}
    total_bytes = 0

    # WIDER: the stored images are squashed to 416x416; resize them back to the original aspect.
    wider = parse_wider_file(data / "widerface/val_subset/labels_original.txt")
    for index, record in enumerate(wider):
        height, width = record.image_size
        stored = data / "widerface/val_subset/images" / Path(record.image_path).name
        image = Image.open(stored).convert("RGB").resize((width, height), Image.BILINEAR)
        blob, scale = encode(image, args.wider_side, args.quality)
        name = f"images/wider/{Path(record.image_path).name}"
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(blob)
        total_bytes += len(blob)
        boxes = [(x1 * scale, y1 * scale, (x2 - x1) * scale, (y2 - y1) * scale) for x1, y1, x2, y2 in record.boxes.tolist()]
        splits["val_wider" if index % 5 == 0 else "train_wider"].append((name, boxes))

    faces = parse_wider_file(data / "faces/labels.txt")
    seen: dict[str, int] = {}
    for record in faces:
        source = Path(record.image_path).parts[0]
        position = seen.get(source, 0)
        seen[source] = position + 1
        image = Image.open(data / "faces" / record.image_path)
        blob, scale = encode(image, args.side, args.quality)
        name = f"images/faces/{record.image_path}"
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(blob)
        total_bytes += len(blob)
        boxes = [(x1 * scale, y1 * scale, (x2 - x1) * scale, (y2 - y1) * scale) for x1, y1, x2, y2 in record.boxes.tolist()]
        split = "val_faces" if position % 12 == 0 else "train_faces"
        splits[split].append((name, boxes))
        splits.setdefault(f"{split}_{source}", []).append((name, boxes))

    for split, entries in splits.items():
        n_boxes = write_list(out / f"{split}.txt", entries)
        print(f"{split}: {len(entries)} images, {n_boxes} faces")
    print(f"{total_bytes / 2**20:.1f} MiB of JPEG in {out}")


if __name__ == "__main__":
    main()
