"""Configuration: nested frozen dataclasses with the paper's values as defaults.

YAML files and ``key=value`` command-line overrides only change what they name. Unknown keys are an
error with a suggestion. Module constructors never read a config; the builders translate it.

Every value is validated when its dataclass is built, before any work: its type (a mapping or a
list where a name or a path is expected is refused, as is a non-finite number), its range, and the
rules across fields (``__post_init__`` of each class). The ``_base_`` chain of YAML files must be
one file name per file, with no cycle. :func:`check_training_paths` checks what the file system says
about the paths a training config names. Each failure is one :class:`srn.errors.ConfigError` line
that names the key.

Reading cannot explode: every YAML text (a file, a ``_base_`` file, a ``key=value`` override) goes
through one budgeted loader (:func:`parse_yaml`): at most :data:`MAX_CONFIG_BYTES` of text and
:data:`MAX_YAML_VALUES` values once its aliases are expanded, so a 600-byte "billion laughs" is
refused before anything walks it. A message shows a value only as a short, printable excerpt
(:func:`srn.errors.excerpt`), and a file with no known section at its top level is "not a config
file": nothing of it is quoted.

Sizes are bounded by the pixel limit of decoding (:func:`max_image_pixels`, shared with
:mod:`srn.data.image_io`): :func:`check_image_size` refuses, in one line that names the limit and
how to raise it, any size setting (an inference size, a benchmark size) whose image would exceed it.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from srn.errors import ConfigError, excerpt, printable
from srn.paths import check_input_file

T = TypeVar("T")

# The levels srn.model builds, for the checks here (this floor cannot import the model's floor; a
# test holds this equal to srn.model.srn.NUM_LEVELS). The backbone's name is checked against the one
# list of backbones, srn.model.backbone.BACKBONES, when a network is built or a checkpoint read.
_LEVELS = 6
MAX_TRAIN_SIZE = 8192  # data.size: a square input of 8192 px already needs tens of GB per image

# The budget of reading YAML (parse_yaml): a config is a few KB of text and a few hundred values.
MAX_CONFIG_BYTES = 1 << 20
MAX_YAML_VALUES = 100_000

# The pixel limit of decoding and of every size setting: 500 megapixels, 1.5 GB as RGB; a 20000 x
# 20000 panorama (400 megapixels) is still read, a 40000 x 40000 bomb (1600) is not.
DEFAULT_MAX_IMAGE_PIXELS = 500_000_000
MAX_PIXELS_ENV = "SRN_MAX_IMAGE_PIXELS"

# Platt calibration (PostProcessConfig.score_scale, score_shift): |scale| and |shift| at most this,
# so that scale * z + shift stays finite in float32 for every logit |z| < 3e35 and a scale never
# rounds to infinity (1e300 would: inf * 0 is NaN, and every face would vanish). A fitted scale is near 1.
MAX_SCORE_CALIBRATION = 1000.0


def max_image_pixels() -> int:
    """The pixel limit of decoding: ``SRN_MAX_IMAGE_PIXELS`` when set (0: none), else
    :data:`DEFAULT_MAX_IMAGE_PIXELS`.

    Raises:
        ValueError: the variable is not a whole number >= 0.
    """
    text = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_IMAGE_PIXELS
    if not text.isascii() or not text.isdigit():
        raise ValueError(f"the environment variable {MAX_PIXELS_ENV} must be a whole number of pixels (0: no limit), got {excerpt(text)}")
    return int(text)


def megapixels(pixels: int) -> str:
    """``pixels`` in megapixels as messages write them: ``1600``, ``0.0012``."""
    return f"{pixels / 1e6:.0f}" if pixels >= 10**6 else f"{pixels / 1e6:.2g}"


def pixel_limit_message(width: int, height: int, limit: int) -> str:
    """The one line that refuses a ``width`` x ``height`` image above the pixel ``limit``."""
    return (f"{width}x{height} pixels ({megapixels(width * height)} megapixels) is above the limit of {megapixels(limit)} "
            f"megapixels that guards against decompression bombs; to read it, raise the limit with the environment "
            f"variable {MAX_PIXELS_ENV}=<pixels> (0: no limit)")


def check_image_size(key: str, height: int, width: int) -> None:
    """Refuse a size setting whose image, ``width`` x ``height`` pixels, exceeds the pixel limit
    (:func:`max_image_pixels`): an inference size up to which photos are resized, a benchmark size.

    Raises:
        ConfigError: ``"<key>: <W>x<H> pixels (...) is above the limit of 500 megapixels that bounds every
            image, read or resized; to use it, raise the limit with the environment variable
            SRN_MAX_IMAGE_PIXELS=<pixels> (0: no limit)"``.
    """
    try:
        limit = max_image_pixels()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if limit and height * width > limit:
        raise ConfigError(f"{key}: {width}x{height} pixels ({megapixels(height * width)} megapixels) is above the limit of "
                          f"{megapixels(limit)} megapixels that bounds every image, read or resized; to use it, raise the "
                          f"limit with the environment variable {MAX_PIXELS_ENV}=<pixels> (0: no limit)")


def _shown(value: Any) -> str:
    return excerpt(list(value) if isinstance(value, tuple) else value)


def _require(ok: bool, key: str, rule: str, value: Any) -> None:
    """Raise ``ConfigError("<key>: must be <rule>, got <value>")`` unless ``ok``.

    A frozen config checks its ranges when it is built, so a bad value stops a run before any work
    (not as a ZeroDivisionError, or an empty run, much later).
    """
    if not ok:
        raise ConfigError(f"{key}: must be {rule}, got {_shown(value)}")


def _at_least(key: str, value: float, low: float) -> None:
    _require(value >= low, key, f"at least {low}", value)


def _positive(key: str, value: float) -> None:
    _require(math.isfinite(value) and value > 0, key, "a positive number", value)


def _non_negative(key: str, value: float) -> None:
    _require(math.isfinite(value) and value >= 0, key, "a number >= 0", value)


def _probability(key: str, value: float) -> None:
    _require(0 <= value <= 1, key, "between 0 and 1", value)


def _interval(key: str, value: tuple[float, ...], low: float, high: float, rule: str) -> None:
    """``value`` is a pair ``(a, b)`` with ``low <= a <= b <= high``."""
    ok = len(value) == 2 and low <= value[0] <= value[1] <= high
    _require(ok, key, rule, value)


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "resnet50"  # a name of srn.model.backbone.BACKBONES: resnet18/34/50/101/152, mobilenet_v2
    width: int = 256  # channels of the FPN, the first-step features and the head
    stc_levels: tuple[int, ...] = (0, 1, 2)  # selective two-step classification levels
    str_levels: tuple[int, ...] = (3, 4, 5)  # selective two-step regression levels
    rfe: bool = True
    anchor_scales: tuple[float, ...] = (2.0, 2.828427)
    anchor_ratio: float = 1.25
    frozen_stem: bool = True
    prior_prob: float = 0.01
    init: str = "normal"  # new layers: N(0, 0.01) as the paper; "scaled" (N(0, 1/fan_in)) for narrow heads
    # The light design (benchmarks/lite_design.md); the defaults are the paper's network.
    tower_convs: int = 2  # conv3x3+ReLU layers per head tower, around the RFE
    separable_head: bool = False  # depthwise-separable 3x3s in the head towers, depthwise k x l in the RFE
    separable_fpn: bool = False  # depthwise-separable 3x3s for the FPN outputs P2..P7
    # Levels whose FPN output gets a zero-initialised residual adapter before the head (0 = stride 4):
    # capacity for one level in a fine-tune that starts as the trained model exactly.
    adapter_levels: tuple[int, ...] = ()
    # Levels that also get a zero-initialised context block after it (the adapter's layers with their
    # 3x3 taps context_dilation cells apart): the surroundings of a level's faces, at the adapter's cost.
    context_levels: tuple[int, ...] = ()
    context_dilation: int = 3
    # ImageNet initialisation of the backbone: None, "imagenet" (torchvision's weights from the hub
    # cache) or the path of a torchvision-layout state dict.
    pretrained: str | None = None

    def __post_init__(self) -> None:
        _require(isinstance(self.backbone, str) and bool(self.backbone.strip()), "model.backbone", "the name of a backbone", self.backbone)
        # The RFE splits the width into four branches of width // 4 channels.
        _require(4 <= self.width <= 4096, "model.width", "a whole number of channels from 4 to 4096", self.width)
        for key in ("stc_levels", "str_levels", "adapter_levels", "context_levels"):
            levels = getattr(self, key)
            ok = all(0 <= level < _LEVELS for level in levels) and len(set(levels)) == len(levels)
            _require(ok, f"model.{key}", f"distinct level indices from 0 to {_LEVELS - 1} (strides 4 to 128)", levels)
        _require(len(self.anchor_scales) > 0 and all(math.isfinite(v) and v > 0 for v in self.anchor_scales),
                 "model.anchor_scales", "a non-empty list of positive numbers", self.anchor_scales)
        _positive("model.anchor_ratio", self.anchor_ratio)
        _require(0 < self.prior_prob < 1, "model.prior_prob", "between 0 and 1 (both excluded)", self.prior_prob)
        _require(self.init in ("normal", "scaled"), "model.init", "normal or scaled", self.init)
        _require(0 <= self.tower_convs <= 16, "model.tower_convs", "from 0 to 16", self.tower_convs)
        _require(type(self.context_dilation) is int and 1 <= self.context_dilation <= 16, "model.context_dilation",
                 "a whole number of cells from 1 to 16", self.context_dilation)
        if self.pretrained is not None:
            _require(bool(self.pretrained.strip()), "model.pretrained", "null, imagenet or the path of a state dict", self.pretrained)


@dataclass(frozen=True)
class PostProcessConfig:
    """The release's single-pass inference (docs/design.md, Inference)."""

    candidate_thresh: float = 0.05  # p2 must exceed this on levels with enough cells
    stc_theta: float = 0.99  # an STC-level candidate needs step-1 negative confidence below theta
    min_cells_for_thresh: int = 120  # levels with fewer cells use threshold 0
    pre_nms_top_k: int = 6000  # per level
    nms_iou: float = 0.4
    max_detections: int = 750
    # Score calibration (Platt scaling): a detection scores sigmoid(score_scale * z + score_shift),
    # z its final logit, fitted so that a score is the measured chance that the box is a face. The
    # defaults keep the network's own sigmoid. Candidates are gated and ranked on the network's own
    # probability, so the calibration changes score values only, not the boxes or their order.
    score_scale: float = 1.0
    score_shift: float = 0.0

    def __post_init__(self) -> None:
        bound = MAX_SCORE_CALIBRATION
        _require(0 < self.score_scale <= bound, "postprocess.score_scale", f"a positive number up to {bound:g}", self.score_scale)
        _require(-bound <= self.score_shift <= bound, "postprocess.score_shift", f"a number from {-bound:g} to {bound:g}",
                 self.score_shift)
        _probability("postprocess.candidate_thresh", self.candidate_thresh)
        _probability("postprocess.stc_theta", self.stc_theta)
        _at_least("postprocess.min_cells_for_thresh", self.min_cells_for_thresh, 0)
        _at_least("postprocess.pre_nms_top_k", self.pre_nms_top_k, 1)
        _require(0 < self.nms_iou <= 1, "postprocess.nms_iou", "in (0, 1]", self.nms_iou)
        _at_least("postprocess.max_detections", self.max_detections, 1)


@dataclass(frozen=True)
class DetectorConfig:
    """What a checkpoint needs to rebuild a detector: the network and its inference settings."""

    model: ModelConfig = field(default_factory=ModelConfig)
    postprocess: PostProcessConfig = field(default_factory=PostProcessConfig)


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert a YAML/CLI value to the annotated type, or raise ConfigError naming ``key``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if dataclasses.is_dataclass(annotation):
        if annotation is DatasetSpec and isinstance(value, str):
            value = {"annotations": value}  # data.train=labels.txt: one source, its format told from the file
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping of its keys, got {_described(value)}")
        return from_dict(annotation, value, prefix=f"{key}.")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        if isinstance(value, str) and value.lower() in ("none", "null") and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {excerpt(value)}")
    if origin is tuple:
        if isinstance(value, str):
            value = parse_yaml(value if value.strip().startswith("[") else f"[{value}]", key)
        if value is None:
            value = []
        if not isinstance(value, Sequence) or isinstance(value, str):
            raise ConfigError(f"{key}: expected a list, got {_described(value)}")
        item_type = args[0] if args else Any
        return tuple(_coerce(v, item_type, key) for v in value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key}: expected true or false, got {excerpt(value)}")
    if annotation is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {excerpt(value)}")
        if isinstance(value, int):
            return value
        try:
            as_float = float(value)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"{key}: expected an integer, got {_described(value)}") from None
        if not as_float.is_integer():
            raise ConfigError(f"{key}: expected an integer, got {excerpt(value)}")
        return int(as_float)
    if annotation is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {excerpt(value)}")
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"{key}: expected a number, got {_described(value)}") from None
        if not math.isfinite(number):
            raise ConfigError(f"{key}: expected a finite number, got {excerpt(value)}")
        return number
    if annotation is str:
        # A number is a fine name (output_dir: 2024); a mapping or a list is a mistake of layout.
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ConfigError(f"{key}: expected a name or a path, got {_described(value)}")
        return str(value)
    return value


def _described(value: Any) -> str:
    """A value in a message, with its kind where the kind is the mistake (a mapping, a list)."""
    if isinstance(value, Mapping):
        return f"a mapping {excerpt(dict(value))}"
    if isinstance(value, list | tuple):
        return f"a list {excerpt(list(value))}"
    return excerpt(value)


def _unknown_key(key: Any, known: Sequence[str], prefix: str) -> ConfigError:
    close = difflib.get_close_matches(key, known, n=1) if isinstance(key, str) and len(key) <= 100 else []
    hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; valid keys: {', '.join(sorted(known))}"
    shown = printable(f"{prefix}{key}") if isinstance(key, str) and len(key) <= 60 else f"{prefix}{excerpt(key)}"
    return ConfigError(f"unknown config key '{shown}'{hint}")


def from_dict(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from a (nested) mapping; unknown keys raise with a suggestion."""
    types_ = _field_types(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in types_:
            raise _unknown_key(key, list(types_), prefix)
        kwargs[key] = _coerce(value, types_[key], f"{prefix}{key}")
    return cls(**kwargs)


def to_dict(config: Any) -> dict[str, Any]:
    """A plain, YAML- and JSON-friendly dict (tuples become lists)."""

    def plain(value: Any) -> Any:
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))


def apply_overrides(config: T, overrides: Sequence[str] | Mapping[str, Any]) -> T:
    """Apply dotted overrides such as ``train.lr=0.02`` (strings) or a nested mapping."""
    data = to_dict(config)
    items = overrides.items() if isinstance(overrides, Mapping) else [_split_override(o) for o in overrides]
    for dotted, value in items:
        node, parts = data, dotted.split(".")
        cls: Any = type(config)
        for depth, part in enumerate(parts):
            known = _field_types(cls)
            if part not in known:
                raise _unknown_key(part, list(known), ".".join(parts[:depth]) + ("." if depth else ""))
            if depth == len(parts) - 1:
                node[part] = value
            else:
                cls = known[part]
                if not dataclasses.is_dataclass(cls):
                    raise ConfigError(f"{dotted}: {'.'.join(parts[: depth + 1])} is not a section")
                node = node[part]
    return from_dict(type(config), data)


def _split_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override {excerpt(text)} must look like key=value")
    key, raw = text.split("=", 1)
    try:
        value = parse_yaml(raw, key.strip())
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


class _Budget(ValueError):
    """A YAML text over the budget of :func:`parse_yaml`; the caller says whose."""


def parse_yaml(text: str, where: str, what: str = "config value") -> Any:
    """``yaml.safe_load(text)`` within a budget: at most :data:`MAX_CONFIG_BYTES` characters and
    :data:`MAX_YAML_VALUES` values with every alias expanded (counted on the composed node graph,
    shared nodes once per use, before anything is built), no alias that contains itself, and
    nesting that Python's stack can hold.

    Raises:
        ConfigError: ``"<where>: not a <what>: ..."`` over the budget.
        yaml.YAMLError: not YAML.
    """
    try:
        if len(text) > MAX_CONFIG_BYTES:
            raise _Budget(f"{len(text)} characters, more than a config's {MAX_CONFIG_BYTES}")
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            _check_expanded_size(node)
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except _Budget as exc:
        raise ConfigError(f"{where}: not a {what}: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{where}: not a {what}: nested too deeply") from None


def _check_expanded_size(root: yaml.Node) -> None:
    """Count the values of a composed YAML document as if every alias were expanded, in time
    linear in its nodes (each node's count is computed once); raise :class:`_Budget` above
    :data:`MAX_YAML_VALUES` or on an alias that contains itself."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if key in sizes:
            continue
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        if children_done:
            open_nodes.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in children)
            if sizes[key] > MAX_YAML_VALUES:
                raise _Budget(f"its aliases expand to more than {MAX_YAML_VALUES} values")
            continue
        if key in open_nodes:
            raise _Budget("an alias refers to the value that contains it")
        open_nodes.add(key)
        stack.append((node, True))
        for child in children:
            if id(child) in open_nodes:
                raise _Budget("an alias refers to the value that contains it")
            if id(child) not in sizes:
                stack.append((child, False))


def load_yaml(cls: type[T], path: str | Path, overrides: Sequence[str] = ()) -> T:
    """Defaults of ``cls``, then the YAML file's values, then ``overrides``, every value validated.

    A YAML file may name a ``_base_`` file (relative to itself) whose values it overrides, which
    may name its own, and so on; a file that comes back in its own chain is an error.
    """
    data = _read_yaml_chain(Path(path), (), tuple(_field_types(cls)))
    try:
        config = from_dict(cls, data)
    except ConfigError as exc:
        raise ConfigError(f"{printable(path)}: {exc}") from None
    return apply_overrides(config, overrides)


def _read_yaml_chain(path: Path, chain: tuple[Path, ...], sections: tuple[str, ...]) -> dict[str, Any]:
    """The merged mapping of ``path`` and its ``_base_`` files; ``chain``: the files that named
    this one, from the first; ``sections``: the keys a config's top level may have.

    A file whose top level is not a mapping, or has keys but none of ``sections`` (nor ``_base_``),
    is "not a config file", and nothing of it is quoted: it may be any file (a password file named
    as a ``_base_``, say)."""
    check_input_file(path, "config file")
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{printable(path)}: cannot be read ({exc.strerror or type(exc).__name__})") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{printable(path)}: not a config file (more than {MAX_CONFIG_BYTES} bytes)")
    try:
        data = parse_yaml(raw.decode("utf-8"), printable(path), "config file") or {}
    except UnicodeDecodeError:
        raise ConfigError(f"{printable(path)}: not a YAML config file (it is not UTF-8 text)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{printable(path)}{where}: invalid YAML") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{printable(path)}: not a config file (its top level is not a mapping of sections)")
    if data and not any(isinstance(key, str) and key in (*sections, "_base_") for key in data):
        raise ConfigError(f"{printable(path)}: not a config file (none of its top-level keys is one of "
                          f"{', '.join(sections)})")
    if "_base_" not in data:
        return data
    base = data.pop("_base_")
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"{printable(path)}: _base_ must name one YAML file (a path relative to this file), got {_described(base)}")
    chain = (*chain, path)
    base_path = path.parent / base
    seen = [p for p in chain if _same_config(p, base_path)]
    if seen:
        cycle = " -> ".join(str(p) for p in (*chain[chain.index(seen[0]):], base_path))
        raise ConfigError(f"{printable(path)}: _base_ {excerpt(base)} leads back to {printable(seen[0])}: the files form "
                          f"a cycle ({printable(cycle)})")
    merged = _read_yaml_chain(base_path, chain, sections)
    _deep_update(merged, data)
    return merged


def _same_config(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (b.exists() and a.samefile(b))
    except OSError:
        return False


def _deep_update(target: dict[str, Any], source: Mapping[str, Any]) -> None:
    for key, value in source.items():
        if isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _deep_update(target[key], value)
        else:
            target[key] = value


# ---------------------------------------------------------------------------------------------
# Training (docs/design.md, Training recipe)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetSpec:
    """One training source."""

    # a name of srn.data.formats.FORMATS: wider (official or list format), fddb, coco; or auto: from the
    # file (.json or JSON text: coco; six numbers per box line: fddb; else wider)
    format: str = "auto"
    annotations: str = ""  # the annotation file (fddb: a glob or comma-separated list of ellipse files)
    images: str | None = None  # image root; default: the annotation file's folder
    repeat: float = 1.0  # over- (>1) or under-sampling (<1) of this source per epoch
    ignore_invalid: bool = True  # WIDER's `invalid` faces become ignore regions

    def __post_init__(self) -> None:
        # The name is checked against srn.data.formats.FORMATS when the source is read.
        _require(isinstance(self.format, str) and bool(self.format.strip()), "data.train.format", "the name of an annotation format", self.format)
        _positive("data.train.repeat", self.repeat)


@dataclass(frozen=True)
class DataConfig:
    train: tuple[DatasetSpec, ...] = ()
    size: int = 1024  # square training input
    zoom_out: tuple[float, ...] = (1.0, 4.0)  # expansion factor range; [] disables
    zoom_out_prob: float = 0.5
    crop_scale: tuple[float, ...] = (0.3, 1.0)  # the smaller square patch's side factor; [] disables
    min_face_size: float = 6.0  # faces with a shorter side below this (after resizing) are ignored
    photometric: bool = True
    flip_prob: float = 0.5
    workers: int = 4

    def __post_init__(self) -> None:
        # Below 32 px the coarsest levels (strides 64 and 128) have no cell left.
        _require(32 <= self.size <= MAX_TRAIN_SIZE, "data.size", f"from 32 to {MAX_TRAIN_SIZE} pixels", self.size)
        if self.zoom_out:
            _interval("data.zoom_out", self.zoom_out, 1.0, math.inf, "[] or [low, high] with 1 <= low <= high")
        _probability("data.zoom_out_prob", self.zoom_out_prob)
        if self.crop_scale:
            _interval("data.crop_scale", self.crop_scale, 1e-6, 1.0, "[] or [low, high] with 0 < low <= high <= 1")
        _non_negative("data.min_face_size", self.min_face_size)
        _probability("data.flip_prob", self.flip_prob)
        _at_least("data.workers", self.workers, 0)


@dataclass(frozen=True)
class LossConfig:
    stc_theta: float = 0.99
    step1_thresholds: tuple[float, ...] = (0.3, 0.7)  # (negative below, positive at or above)
    step2_thresholds: tuple[float, ...] = (0.4, 0.5)
    allow_low_quality_matches: bool = False  # the paper says nothing; off
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    smooth_l1_beta: float = 1.0 / 9.0
    step1_cls_weight: float = 1.0
    step1_reg_weight: float = 1.0
    step2_cls_weight: float = 1.0
    step2_reg_weight: float = 1.0
    stc_filter_positives: bool = False

    def __post_init__(self) -> None:
        _probability("loss.stc_theta", self.stc_theta)
        for key in ("step1_thresholds", "step2_thresholds"):
            _interval(f"loss.{key}", getattr(self, key), 0.0, 1.0, "[negative below, positive from] with 0 <= negative <= positive <= 1")
        _require(self.focal_alpha == -1 or 0 <= self.focal_alpha <= 1, "loss.focal_alpha", "between 0 and 1, or -1 (no weighting)", self.focal_alpha)
        _non_negative("loss.focal_gamma", self.focal_gamma)
        _non_negative("loss.smooth_l1_beta", self.smooth_l1_beta)
        for key in ("step1_cls_weight", "step1_reg_weight", "step2_cls_weight", "step2_reg_weight"):
            _non_negative(f"loss.{key}", getattr(self, key))


@dataclass(frozen=True)
class TrainConfig:
    output_dir: str = "runs/srn"
    epochs: int = 130  # 100 at lr, 20 at lr/10, 10 at lr/100
    lr: float = 0.01
    lr_steps: tuple[int, ...] = (100, 120)  # epochs at which the rate drops by lr_gamma
    lr_gamma: float = 0.1
    warmup_iters: int = 0  # the paper has none; a short linear warmup is harmless
    warmup_factor: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 1e-4
    batch_size: int = 32  # effective (global) batch: per-device batch x devices x accumulation
    batch_per_device: int = 8
    max_iters: int | None = None  # stop early (smoke runs); None = the full schedule
    max_minutes: float | None = None  # stop (with a checkpoint and model.pt) after this long
    amp: bool = True  # bf16 autocast on CUDA; on the CPU only with cpu_bf16
    # bf16 autocast on the CPU as well: 2.2x the training images per second on a CPU with AVX-512 BF16
    # (benchmarks/RESULTS.md, "bf16 training on the CPU"); not measured on CPUs without it.
    cpu_bf16: bool = False
    channels_last: bool = True
    freeze_bn: bool = True  # BN statistics frozen (ImageNet values): exact under DDP, small batches
    grad_clip: float | None = None
    seed: int = 0
    deterministic: bool = False
    checkpoint_every: int = 1000  # iterations (optimizer steps); also at every epoch end
    log_every: int = 20
    device: str | None = None  # default: cuda:LOCAL_RANK when available, else cpu
    # Start from an srn checkpoint's weights (fine-tuning); "shipped" is the packaged model. Every
    # tensor of the model must come from the file (a dense head may become a separable one), unless
    # init_strict is false: then the tensors without a match keep their initialisation.
    init_from: str | None = None
    init_strict: bool = True
    # Score calibration at the end of training: this share of the first data.train source's images
    # is held out of training, and Platt scaling fitted on the model's detections there is stored in
    # model.pt (postprocess.score_scale, score_shift), so that score thresholds keep their meaning.
    calibrate_fraction: float = 0.0
    # Distillation: a trained srn checkpoint whose outputs on each batch the model also learns
    # (srn.criterion.DistillationCriterion), weighted by distill_weight; same levels and anchors.
    teacher: str | None = None
    distill_weight: float = 1.0
    # Anchors whose IoU with a labelled box (face or ignore region) is at least this learn from the
    # labels only, not from the teacher (srn.criterion.TeacherDistillation); null: from both.
    distill_defer_iou: float | None = None
    # Parameters kept as they are: names starting with any of these (e.g. backbone, fpn).
    freeze: tuple[str, ...] = ()
    tensorboard: bool = True
    # Evaluation during training (srn.engine.hooks.EvalHook): every eval_every steps, and at the end,
    # the detector on a held-out annotation file (eval_format: as data.train's format; eval_images:
    # its image folder; auto: from the file) scores AP at IoU 0.5, logged to eval.jsonl; the best model is kept as best.pt.
    eval_annotations: str | None = None
    eval_images: str | None = None
    eval_format: str = "auto"
    eval_every: int = 1000
    eval_max_size: int = 1024  # the detector's max_size on the held-out images

    def __post_init__(self) -> None:
        _require(bool(self.output_dir.strip()), "train.output_dir", "the path of a folder", self.output_dir)
        _at_least("train.epochs", self.epochs, 1)
        _positive("train.lr", self.lr)
        for step in self.lr_steps:
            _require(step >= 0, "train.lr_steps", "epochs >= 0", self.lr_steps)
        _positive("train.lr_gamma", self.lr_gamma)
        _at_least("train.warmup_iters", self.warmup_iters, 0)
        _non_negative("train.warmup_factor", self.warmup_factor)
        _non_negative("train.momentum", self.momentum)
        _non_negative("train.weight_decay", self.weight_decay)
        _at_least("train.batch_size", self.batch_size, 1)
        _at_least("train.batch_per_device", self.batch_per_device, 1)
        if self.max_iters is not None:
            _at_least("train.max_iters", self.max_iters, 1)
        if self.max_minutes is not None:
            _positive("train.max_minutes", self.max_minutes)
        if self.grad_clip is not None:
            _non_negative("train.grad_clip", self.grad_clip)  # 0: no clipping
        _at_least("train.checkpoint_every", self.checkpoint_every, 1)
        _at_least("train.log_every", self.log_every, 1)
        _non_negative("train.distill_weight", self.distill_weight)
        if self.distill_defer_iou is not None:
            _require(0 < self.distill_defer_iou <= 1, "train.distill_defer_iou", "null or in (0, 1]", self.distill_defer_iou)
        _require(0 <= self.calibrate_fraction < 1, "train.calibrate_fraction", "in [0, 1)", self.calibrate_fraction)
        _at_least("train.eval_every", self.eval_every, 1)
        _at_least("train.eval_max_size", self.eval_max_size, 32)
        if self.eval_annotations is not None:
            _require(bool(self.eval_annotations.strip()), "train.eval_annotations", "null or an annotation file", self.eval_annotations)
        _require(all(isinstance(p, str) and p.strip() for p in self.freeze), "train.freeze",
                 "a list of parameter-name prefixes (e.g. backbone, fpn)", self.freeze)


@dataclass(frozen=True)
class TrainingConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    postprocess: PostProcessConfig = field(default_factory=PostProcessConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def check_training_paths(config: TrainingConfig) -> None:
    """What the file system says about the paths of ``config``, checked before any work: the
    output folder is a folder, or can become one.

    Raises:
        ConfigError: ``"train.output_dir: <path> is a file, not a folder"``, or a file stands where
            one of its parent folders should be.
    """
    output = Path(config.train.output_dir).expanduser()
    for folder in (output, *output.parents):
        if folder.is_dir():
            return
        if folder.exists() or folder.is_symlink():
            what = "is a file, not a folder" if folder == output else f"cannot be made: {folder} is a file, not a folder"
            raise ConfigError(f"train.output_dir: {output} {what}")
