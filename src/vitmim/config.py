"""Typed configuration: dataclasses, YAML files, dotted ``--set key=value`` overrides.

One :class:`Config` describes a whole experiment (data, model, both training stages); each command
reads the sections it needs. Every key is declared with :func:`setting`: its type, default,
meaning and the values it accepts (a :class:`Range`) in one place. Every value is checked against
its annotation and its range before any work starts, and a bad one is refused with one line
naming the key, the value and what was expected.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import importlib.util
import json
import math
import re
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from vitmim.errors import ConfigError

# ---------------------------------------------------------------------------------------------
# ranges: what a key accepts beyond its annotation


@dataclass(frozen=True)
class Range:
    """The values a key accepts beyond its type: bounds on numbers (list items included), a
    pattern for strings (list items included), and for lists non-emptiness and distinct items.
    Floats are always refused when NaN or infinite, whatever the bounds."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False  # lo itself is refused
    hi_open: bool = False  # hi itself is refused
    pattern: str | None = None  # a string must match it whole
    nonempty: bool = False  # a list needs at least one item
    distinct: bool = False  # a list's items may not repeat
    text: str = ""  # what is expected, when the bounds alone would not say it

    def describe(self) -> str:
        if self.text:
            return self.text
        if self.lo is not None and self.hi is not None:
            return (
                f"a number in {'(' if self.lo_open else '['}{self.lo:g}, "
                f"{self.hi:g}{')' if self.hi_open else ']'}"
            )
        if self.lo is not None:
            return f"a number {'>' if self.lo_open else '>='} {self.lo:g}"
        if self.hi is not None:
            return f"a number {'<' if self.hi_open else '<='} {self.hi:g}"
        return "any value of its type"

    def accepts(self, value: Any) -> bool:
        if isinstance(value, bool) or value is None:
            return True  # the annotation alone decides
        if isinstance(value, (int, float)):
            return self._in_bounds(value)
        if isinstance(value, str):
            return self.pattern is None or re.fullmatch(self.pattern, value) is not None
        if isinstance(value, list):
            if (self.nonempty and not value) or (
                self.distinct and len(set(map(repr, value))) < len(value)
            ):
                return False
            return all(self.accepts(v) for v in value)
        return True

    def _in_bounds(self, x: float) -> bool:
        if isinstance(x, float) and not math.isfinite(x):
            return False
        if self.lo is not None and (x < self.lo or (self.lo_open and x == self.lo)):
            return False
        return self.hi is None or not (x > self.hi or (self.hi_open and x == self.hi))


ANY = Range()  # the annotation says it all: true/false, one of a few names
POSITIVE = Range(lo=0, lo_open=True)
NON_NEGATIVE = Range(lo=0)
COUNT = Range(lo=1, text="an integer >= 1")
FRACTION_OPEN = Range(0, 1, hi_open=True)  # [0, 1): 1 would leave nothing (decay, drop rate)
# Model sizes far beyond any accelerator's memory are typos (1920000 for 192): refused here rather
# than as an allocation failure minutes later.
SIZE = Range(1, 16384, text="an integer in [1, 16384]")
LAYERS = Range(1, 1024, text="an integer in [1, 1024]")
BETA = Range(0, 1e38)  # a Beta(a, a) parameter; torchvision draws it in float32 (max 3.4e38)
SEED = Range(0, 2**63 - 1, text=f"an integer in [0, {2**63 - 1}]")  # torch.manual_seed's range
PATH = Range(pattern=r"[^\x00]+", text="a non-empty path (or null)")
DEVICE = Range(pattern=r"auto|cpu|cuda|cuda:[0-9]+|mps", text="auto, cpu, cuda, cuda:N or mps")


def setting(default: Any, accepts: Range) -> Any:
    """A config key: a dataclass field with its ``default`` and the values it ``accepts`` beyond
    its annotation (read back by :func:`range_of`); a list default is copied per instance.
    Every key is declared so (a section that only changes an inherited key's default keeps its
    base's range): tests/test_validation.py fails on a key without a range."""
    meta = {"range": accepts}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


# ---------------------------------------------------------------------------------------------
# the sections


@dataclass
class DataConfig:
    source: Literal["auto", "tin", "folder", "unlabelled"] = setting("auto", ANY)
    path: str | None = setting(None, PATH)  # else $VITMIM_DATA, else the default download location
    # first K classes, an explicit list, or None = all; auto: the first 10 of Tiny ImageNet (the
    # TIN-10 the recipes were tuned on), every class of any other source
    classes: int | list[str] | Literal["auto"] | None = setting(
        "auto",
        Range(
            lo=1,
            pattern=r"[^\x00]+",
            nonempty=True,
            distinct=True,
            text="a count >= 1, a non-empty list of distinct class ids, null (all classes) or auto",
        ),
    )
    # with an int `classes`: draw K classes with this seed instead
    class_seed: int | None = setting(None, SEED)
    # with an int `classes` = K: 0 = the first K; k >= 1 = the k-th block of K classes of a fixed
    # shuffle of the classes after the first K (blocks disjoint from them and from each other)
    class_subset: int = setting(0, Range(lo=0, text="0 (the first data.classes) or a block >= 1"))
    # share of training labels the classifier sees (per class)
    label_fraction: float = setting(1.0, Range(0, 1, lo_open=True))
    # a source without a validation split (a folder without val/, an unlabelled folder) holds out
    # this share of its images (per class), drawn with split_seed; 0 = no validation split
    val_fraction: float = setting(0.1, Range(0, 1, hi_open=True))
    split_seed: int = setting(0, SEED)
    cache_dir: str | None = setting(None, PATH)  # else $VITMIM_CACHE, else ~/.cache/vitmim
    # How an image that is not img_size x img_size enters the cache: fit (scale, aspect lost),
    # pad (letterbox on white), crop (centre), error (refuse). auto: error for Tiny ImageNet,
    # whose images are all 64x64 (another size means a damaged copy), fit for other sources.
    resize: Literal["auto", "fit", "pad", "crop", "error"] = setting("auto", ANY)


@dataclass
class ModelConfig:
    # vit: vitmim's ViT; unet-vit: conv encoder + ViT bottleneck + conv decoder; timm: a
    # VisionTransformer from timm.create_model(timm_name), never with downloaded weights
    arch: Literal["vit", "unet-vit", "timm"] = setting("vit", ANY)
    # with arch timm: the registered timm model whose design (qkv bias, LayerScale, register
    # tokens, norms) the encoder takes; its size is set by the keys below, as for vitmim's ViT
    timm_name: str = setting(
        "vit_tiny_patch16_224",
        Range(
            pattern=r"[A-Za-z0-9_]+",
            text="a timm model name without a weights tag, e.g. vit_tiny_patch16_224",
        ),
    )
    img_size: int = setting(64, Range(1, 4096, text="an integer in [1, 4096] (px)"))
    patch_size: int = setting(8, COUNT)  # px; the ViT's token grid is img_size / patch_size
    embed_dim: int = setting(192, SIZE)
    depth: int = setting(6, LAYERS)
    num_heads: int = setting(3, COUNT)
    mlp_ratio: float = setting(4.0, Range(0, 64, lo_open=True))
    # Early Convolutions: small conv stack instead of the patch projection
    conv_stem: bool = setting(False, ANY)
    # residual branches gated by a learnable scalar initialised at 0
    rezero: bool = setting(False, ANY)
    # position embedding, learned in either case: sincos starts from the 2-D sine-cosine table
    # (MAE), learned from small random values (timm's ViT)
    pos_embed: Literal["sincos", "learned"] = setting("sincos", ANY)
    # the classifier's pooling: avg = mean over patch tokens; token = a class token (timm's ViT
    # default). The restorer has no class token: after a transfer it starts untrained.
    global_pool: Literal["avg", "token"] = setting("avg", ANY)
    decoder_dim: int = setting(128, SIZE)  # fast-path (visible tokens only) decoder width
    # fast-path decoder blocks (MAE: depth 1 fine-tunes as well as 8); 0: a linear head
    decoder_depth: int = setting(1, Range(0, 1024, text="an integer in [0, 1024]"))
    # conv channels, one per 2x downsample of the unet-vit encoder
    unet_channels: list[int] = setting(
        [32, 64, 128],
        Range(
            1,
            16384,
            nonempty=True,
            text="a non-empty list of positive channel counts (at most 16384)",
        ),
    )
    # unet-vit decoder skip connections
    skips: Literal["all", "none", "no-finest"] = setting("all", ANY)


# the model.arch values whose encoder is a plain token transformer: it can encode the visible
# tokens alone (the restorer's fast path) and exports to timm
TOKEN_ARCHS = ("vit", "timm")


@dataclass
class AugmentConfig:
    # px of reflect padding for random-crop; 0 = off
    crop_pad: int = setting(4, Range(lo=0, text="an integer >= 0"))
    flip: bool = setting(True, ANY)
    # TrivialAugmentWide's ops and bins, one op per image
    trivial_augment: bool = setting(False, ANY)
    mixup: float = setting(0.0, BETA)  # Beta(a, a) parameter; 0 = off
    cutmix: float = setting(0.0, BETA)  # Beta(a, a) parameter; 0 = off
    # probability of RandomErasing (torchvision's defaults) per image
    erasing: float = setting(0.0, Range(0, 1))


@dataclass
class StageConfig:
    epochs: int = setting(10, COUNT)
    batch_size: int = setting(128, COUNT)  # global batch (split across processes under torchrun)
    lr: float = setting(1e-3, POSITIVE)  # peak learning rate at batch_size
    min_lr: float = setting(1e-5, NON_NEGATIVE)  # floor of the cosine schedule
    weight_decay: float = setting(0.05, NON_NEGATIVE)
    warmup_epochs: float = setting(1.0, NON_NEGATIVE)
    grad_clip: float = setting(0.0, NON_NEGATIVE)  # max grad norm; 0 = off
    drop_path: float = setting(0.0, FRACTION_OPEN)
    ema: float = setting(0.0, FRACTION_OPEN)  # EMA decay of weights per step; 0 = off
    seed: int = setting(0, SEED)
    nan_policy: Literal["stop", "rollback"] = setting("stop", ANY)  # on a non-finite loss
    # RUN/best.safetensors: the weights of the epoch with the best value of this validation
    # metric, beside the last; none = keep the last only. Each stage declares the metrics it has.
    keep_best: str = "none"
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class PretrainConfig(StageConfig):
    # many cheap fast-path epochs (75 % of 8 px cells masked: the encoder sees a quarter of the
    # tokens) on per-patch normalised targets transfer better than fewer raw-pixel epochs; see
    # docs/results/tin10_recipe.md, "What makes pre-training pay"
    epochs: int = 20
    lr: float = 1.5e-3
    mask_patch: int = setting(8, COUNT)  # px side of a square mask cell
    # share of cells masked
    mask_ratio: float = setting(0.75, Range(0, 1, lo_open=True, hi_open=True))
    # encoder sees visible tokens only when mask_patch % patch_size == 0 (on a ViT)
    fast: bool = setting(True, ANY)
    loss: Literal["l1", "l2"] = setting("l1", ANY)
    loss_on: Literal["masked", "all"] = setting("masked", ANY)
    norm_pix: bool = setting(True, ANY)  # per-patch normalised targets (MAE's norm_pix_loss)
    # the images the restorer learns from, labels never used: classes = the training images of
    # the classes fine-tuning uses; all = every training image of data.path, whatever the class;
    # any other value is a path to a folder or archive of images (validation split: its own)
    pool: str = setting(
        "classes",
        Range(pattern=r"[^\x00]+", text="classes, all, or a path to a folder or archive of images"),
    )
    keep_best: str = setting(
        "val_psnr",
        Range(
            pattern="none|val_psnr|val_pixel_l1|val_loss",
            text="none, val_psnr, val_pixel_l1 or val_loss",
        ),
    )


POOLS = ("classes", "all")  # pretrain.pool values that are not paths


def pretrain_data(cfg: Config) -> DataConfig:
    """The data section pre-training reads (:attr:`PretrainConfig.pool`): ``cfg.data`` itself,
    its source without the class selection, or the pool's path read with the same settings."""
    pool = cfg.pretrain.pool
    if pool == "classes":
        return cfg.data
    every = dataclasses.replace(
        cfg.data, classes=None, class_seed=None, class_subset=0, label_fraction=1.0
    )
    return every if pool == "all" else dataclasses.replace(every, path=pool, source="auto")


@dataclass
class FinetuneConfig(StageConfig):
    # batch 64: twice the optimiser steps per epoch of 128 at the same lr, which a 15-epoch run,
    # still underfitting when it stops, turns into accuracy on both sides for a little more wall
    # time; see docs/results/tin10_recipe.md, "Batch size, pre-training length, equal FLOPs"
    epochs: int = 15
    batch_size: int = 64
    label_smoothing: float = setting(0.1, FRACTION_OPEN)
    # layer-wise lr decay, pre-trained inits only; 1.0 = off
    layer_decay: float = setting(1.0, Range(0, 1, lo_open=True))
    drop_path: float = 0.1
    keep_best: str = setting(
        "val_top1",
        Range(
            pattern="none|val_top1|val_top5|val_loss", text="none, val_top1, val_top5 or val_loss"
        ),
    )


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    device: str = setting("auto", DEVICE)
    amp: bool = setting(True, ANY)  # bf16 autocast on a GPU; ignored on the CPU
    # torch.compile forward + loss + backward (CUDA graphs on a GPU)
    compile: bool = setting(False, ANY)
    # also checkpoint every N optimiser steps; 0 = once per epoch
    checkpoint_every: int = setting(0, Range(lo=0, text="an integer >= 0 (0 = once per epoch)"))
    # the scratch baseline's own tuned recipe: dotted finetune.* overrides, e.g.
    # {finetune.lr: 2e-3, finetune.drop_path: 0.0}; empty = no tuned recipe. Its keys are
    # checked, each against its own range, by tuned_scratch.
    scratch: dict[str, Any] = setting({}, ANY)


def check_device(device: str, option: str = "--device") -> str:
    """``device`` when it names a kind of device (not whether this machine has one), else a
    ConfigError; torch-free, so a typo is refused before torch loads."""
    if not isinstance(device, str) or not DEVICE.accepts(device):
        raise ConfigError(f"{option} {device}: expected {DEVICE.describe()}")
    return device


def range_of(cls: type, name: str) -> Range | None:
    """The range declared on field ``name`` of section ``cls``; a section that only changes an
    inherited key's default keeps the range of the class it extends."""
    for c in cls.__mro__:
        f = getattr(c, "__dataclass_fields__", {}).get(name)
        if f is not None and "range" in f.metadata:
            return f.metadata["range"]
    return None


def config_keys(cls: type = Config, prefix: str = "") -> list[tuple[str, Any, Range | None]]:
    """Every leaf key of ``cls`` as (dotted key, annotation, declared range or None)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        if dataclasses.is_dataclass(hints[f.name]):
            out += config_keys(hints[f.name], key)
        else:
            out.append((key, hints[f.name], range_of(cls, f.name)))
    return out


# ---------------------------------------------------------------------------------------------
# type checking of values against annotations


def _show(value: Any, limit: int = 60) -> str:
    """``repr`` cut to one short line (a value may be a long list or a deep mapping)."""
    if value is None or isinstance(value, bool):
        return str(value).lower().replace("none", "null")  # as YAML spells them
    try:
        return _clip(repr(value), limit)
    except RecursionError:
        return f"<{type(value).__name__} nested too deeply>"


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check(value: Any, tp: Any, key: str) -> Any:
    """Return ``value`` converted to annotation ``tp``, or raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _check(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"config key {key}: expected {_describe(tp)}, got {_show(value)}")
    if origin is Literal:
        if isinstance(value, str) and value in typing.get_args(tp):
            return value
        choices = ", ".join(repr(c) for c in typing.get_args(tp))
        raise ConfigError(f"config key {key}: expected one of {choices}, got {_show(value)}")
    if origin is dict:  # a section of dotted overrides (``scratch``), checked where it is used
        if isinstance(value, dict):
            return flatten(value)
        raise ConfigError(f"config key {key}: expected a mapping of dotted keys, got {value!r}")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"config key {key}: expected a list, got {_show(value)}")
        return [_check(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is type(None):
        if value is None:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        return _to_float(value, key)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"unsupported annotation {tp} for {key}")
    raise ConfigError(f"config key {key}: expected {_describe(tp)}, got {_show(value)}")


def _to_float(value: Any, key: str) -> float:
    """A finite float from a number, or from text (YAML 1.1 reads 1e-4, without a dot, as text)."""
    x = None
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            x = float(value)
        except (ValueError, OverflowError):
            x = None if not isinstance(value, int) else math.inf  # an int beyond float range
    if x is None:
        raise ConfigError(f"config key {key}: expected a number, got {_show(value)}")
    if not math.isfinite(x):
        raise ConfigError(f"config key {key}: expected a finite number, got {_show(value)}")
    return x


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(t) for t in typing.get_args(tp))
    if origin is list:
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    if origin is Literal:
        return "one of " + ", ".join(repr(c) for c in typing.get_args(tp))
    return {
        type(None): "null",
        bool: "true/false",
        int: "an integer",
        float: "a number",
        str: "a string",
    }.get(tp, str(tp))


def _build(cls: type, values: dict, prefix: str) -> Any:
    """Build dataclass ``cls`` from a (possibly partial) dict, refusing unknown keys."""
    if not isinstance(values, dict):
        raise ConfigError(
            f"config key {prefix or '<root>'}: expected a mapping, got {_show(values)}"
        )
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for k in values:
        if k not in names:
            where = f"{prefix}.{k}" if prefix else k
            raise ConfigError(
                f"unknown config key {_clip(str(where))} (known: {', '.join(sorted(names))})"
            )
    kwargs = {}
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            section = values.get(f.name, {})
            kwargs[f.name] = _build(typing.cast(type, tp), {} if section is None else section, key)
        elif f.name in values:
            kwargs[f.name] = _check(values[f.name], tp, key)
    return cls(**kwargs)


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


# ---------------------------------------------------------------------------------------------
# files and overrides


def _read_text(path: str | Path, what: str) -> str:
    """UTF-8 text of a file the user named, or a one-line ConfigError saying why not."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{p}: expected a {what}, found a folder")
    if not p.is_file():
        raise ConfigError(f"{p}: {what} not found")
    try:
        return p.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{p}: {what} is not UTF-8 text (byte {e.object[e.start]:#04x} at "
            f"offset {e.start}; a binary file?)"
        ) from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read the {what} ({e.strerror})") from None


MAX_YAML_VALUES = 100_000  # a config holds hundreds; an alias bomb's billions only once expanded


class YAMLTooLarge(yaml.YAMLError):
    """A YAML document that expands (through aliases) to more values than a config holds."""


def load_yaml(text: str):
    """``yaml.safe_load`` for every config, override and run file vitmim reads; a document
    whose aliases expand to more than MAX_YAML_VALUES values (371 bytes of nested aliases make
    billions, and walking them took minutes and gigabytes) raises YAMLTooLarge."""
    data = yaml.safe_load(text)
    stack, seen = [data], 0
    while stack:  # counts each value as often as aliases repeat it, stopping at the limit
        value = stack.pop()
        seen += 1
        if seen > MAX_YAML_VALUES:
            raise YAMLTooLarge(
                f"expands to more than {MAX_YAML_VALUES:,} values through its "
                f"aliases (&/*); a config is far smaller"
            )
        if isinstance(value, dict):
            stack.extend(value)
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return data


def read_yaml_mapping(path: str | Path, what: str = "config file") -> dict:
    """A YAML file whose top level is a mapping, or a one-line ConfigError naming the file."""
    p = Path(path)
    text = _read_text(p, what)
    try:
        data = load_yaml(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    except RecursionError:
        raise ConfigError(f"{p}: {what} nests too deeply to be a config") from None
    if data is None:
        raise ConfigError(f"{p}: {what} is empty (expected a mapping of keys)")
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of keys at the top level, got {_show(data)}")
    return data


JSON_TYPES = {
    dict: "an object",
    list: "a list",
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true/false",
}


def read_json_mapping(path: str | Path, what: str, keys: dict[str, type] | None = None) -> dict:
    """A JSON file whose top level is a mapping holding ``keys`` (name -> type), or a
    one-line ConfigError naming the file: truncated, not JSON, wrong types, a folder."""
    p = Path(path)
    text = _read_text(p, what)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"{p}: not valid JSON ({e.msg} at line {e.lineno}; a truncated {what}?)"
        ) from None
    except RecursionError:
        raise ConfigError(f"{p}: {what} nests too deeply") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: {what}: expected a JSON object, got {_show(data)}")
    for name, tp in (keys or {}).items():
        if not isinstance(data.get(name), tp) or (tp is int and isinstance(data[name], bool)):
            raise ConfigError(
                f"{p}: {what}: key {name}: expected {JSON_TYPES[tp]}, got {_show(data.get(name))}"
            )
    return data


def read_jsonl(path: str | Path, what: str = "metrics log") -> list[dict]:
    """One JSON object per line (blank lines skipped; a missing file is empty), or a one-line
    ConfigError naming the file and line."""
    p = Path(path)
    if not p.exists():
        return []
    records = []
    for i, line in enumerate(_read_text(p, what).splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            record = None
        if not isinstance(record, dict):
            raise ConfigError(
                f"{p}:{i}: {what}: expected one JSON object per line, got "
                f"{_clip(line.strip(), 40)!r}"
            )
        records.append(record)
    return records


MAX_BASE_DEPTH = 32  # files building on files; deeper is a mistake, not a design


def _read_yaml(path: str | Path, chain: tuple[Path, ...] = ()) -> dict:
    """A config file merged over the file(s) its ``base:`` names (relative to itself)."""
    p = Path(path)
    here = p.resolve()
    if here in chain:
        names = " -> ".join(str(c) for c in (*chain, here))
        raise ConfigError(f"{p}: base files include each other ({names})")
    if len(chain) >= MAX_BASE_DEPTH:
        raise ConfigError(f"{p}: base files nest deeper than {MAX_BASE_DEPTH} levels")
    data = read_yaml_mapping(p)
    base = data.pop("base", None)
    if base is None:
        return data
    bases = [base] if isinstance(base, str) else base
    if not (
        isinstance(bases, list)
        and bases
        and all(isinstance(b, str) and b and "\x00" not in b for b in bases)
    ):
        raise ConfigError(
            f"{p}: key base: expected a file name or a list of them, got {_show(base)}"
        )
    merged: dict = {}
    for b in bases:
        merged = _merge(merged, _read_yaml(p.parent / b, (*chain, here)))
    return _merge(merged, data)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"pretrain.mask_ratio=0.4"`` -> (["pretrain", "mask_ratio"], 0.4); values are YAML."""
    if "=" not in text:
        raise ConfigError(f"--set {_clip(text)}: expected key=value, e.g. pretrain.mask_ratio=0.4")
    key, raw = text.split("=", 1)
    keys = key.strip().split(".")
    if not all(keys):
        raise ConfigError(
            f"--set {_clip(text)}: expected a dotted key, e.g. pretrain.mask_ratio=0.4"
        )
    try:
        value = load_yaml(raw) if raw.strip() else None
    except YAMLTooLarge as e:
        raise ConfigError(f"--set {key.strip()}: value {e}") from None
    except yaml.YAMLError:
        value = raw
    except RecursionError:
        raise ConfigError(f"--set {key.strip()}: value nests too deeply") from None
    return keys, value


def overrides_to_dict(overrides: list[str]) -> dict:
    out: dict = {}
    for text in overrides:
        keys, value = parse_override(text)
        out = set_keys(out, {".".join(keys): value}, where=f"--set {_clip(text)}")
    return out


def load_config(
    files: Sequence[str | Path] = (), overrides: Sequence[str] = (), base: dict | None = None
) -> Config:
    """Defaults <- ``base`` <- each YAML file in order <- dotted overrides; then validated."""
    if base is not None and not isinstance(base, dict):
        raise ConfigError(f"config: expected a mapping of keys, got {_show(base)}")
    values = _merge(dict(base or {}), explicit_values(files, overrides))
    return validate(_build(Config, values, ""))


def explicit_values(files: Sequence[str | Path] = (), overrides: Sequence[str] = ()) -> dict:
    """The keys the files and overrides set, merged in order (defaults left out)."""
    values: dict = {}
    for f in files:
        values = _merge(values, _read_yaml(f))
    return _merge(values, overrides_to_dict(list(overrides)))


# model keys that only shape the restorer's decoder: a classifier never reads them
DECODER_KEYS = frozenset({"decoder_dim", "decoder_depth"})


def load_config_for_init(
    files: Sequence[str | Path], overrides: Sequence[str], run_model: dict, origin: str
) -> Config:
    """The config of a fine-tune from a trained run: the model section (architecture, image and
    patch size, stem) comes from the run, as timm's ``pretrained_cfg`` does, under the files
    and overrides. A backbone key they set to another value than the run's is refused, naming
    both values (a ``CheckpointError``: the weights would not fit)."""
    from vitmim.errors import CheckpointError

    run = _build(ModelConfig, run_model, "model")
    cfg = load_config(files, overrides, base={"model": to_dict(run)})
    explicit = explicit_values(files, overrides).get("model") or {}
    for key in explicit if isinstance(explicit, dict) else ():
        ours, theirs = getattr(cfg.model, key, None), getattr(run, key, None)
        if key not in DECODER_KEYS and ours != theirs:
            raise CheckpointError(
                f"--init {origin}: was trained with model.{key}={_show(theirs)}, "
                f"the config sets model.{key}={_show(ours)}; drop that setting "
                f"(the model is built from the run) or fine-tune without --init"
            )
    return cfg


# ---------------------------------------------------------------------------------------------
# validation: every key in its range, then what keys demand of each other


def validate(cfg: Config) -> Config:
    """``cfg`` checked: every key against its annotation and the range on its field, then the
    constraints between keys; the first problem is raised as a one-line ConfigError.

    Returns a copy whose ``scratch`` values carry the types the recipe gives them (YAML 1.1
    reads 2e-3 as text); ``cfg`` itself is left as it was.
    """
    for key, tp, rule in config_keys():
        value: Any = cfg
        for part in key.split("."):
            value = getattr(value, part)
        _check(value, tp, key)
        if rule is not None and not rule.accepts(value):
            raise ConfigError(f"config key {key}: expected {rule.describe()}, got {_show(value)}")
    _check_model(cfg.model)
    _check_masking(cfg.model.img_size, cfg.pretrain)
    for name in ("pretrain", "finetune"):
        st: StageConfig = getattr(cfg, name)
        if st.min_lr > st.lr:
            raise ConfigError(
                f"config key {name}.min_lr: {st.min_lr:g} is above {name}.lr "
                f"{st.lr:g}; expected a floor at or below the peak"
            )
        if st.augment.crop_pad >= cfg.model.img_size:
            raise ConfigError(
                f"config key {name}.augment.crop_pad: {st.augment.crop_pad} px; "
                f"expected less than model.img_size {cfg.model.img_size} "
                f"(reflect padding)"
            )
    _validate_subset(cfg.data)
    out = copy.deepcopy(cfg)
    if cfg.scratch:
        tuned = flatten(to_dict(tuned_scratch(cfg)))
        out.scratch = {k: tuned[k] for k in cfg.scratch}
    return out


def _validate_subset(d: DataConfig) -> None:
    if d.class_subset < 0:
        raise ConfigError(
            f"config key data.class_subset: expected 0 (the first data.classes) or a "
            f"block number >= 1, got {d.class_subset}"
        )
    if d.class_subset and not isinstance(d.classes, int) and d.classes != "auto":
        raise ConfigError(
            f"config key data.class_subset: needs a class count in data.classes, got {d.classes!r}"
        )
    if d.class_subset and d.class_seed is not None:
        raise ConfigError(
            "config key data.class_subset: set either it or data.class_seed, not both"
        )


# model keys a scratch recipe may set: they shape only a classifier trained from random weights
# (how it pools, how its positions start), the model-side differences between vitmim's ViT and
# timm's
SCRATCH_MODEL_KEYS = ("model.pos_embed", "model.global_pool")


def tuned_scratch(cfg: Config) -> Config:
    """``cfg`` with its ``scratch`` overrides applied to the fine-tune recipe: the recipe of the
    baseline trained from random weights with its own tuning, so that the comparison does not
    rest on a scratch model that inherits a recipe tuned for the pre-trained one.

    Only ``finetune.*`` keys (the seed aside, which is the run's) and the classifier's own model
    keys (:data:`SCRATCH_MODEL_KEYS`) may be overridden; an unknown key or bad value is refused
    naming ``scratch.<key>``.
    """
    for key in cfg.scratch:
        if not (key.startswith("finetune.") or key in SCRATCH_MODEL_KEYS) or key == "finetune.seed":
            raise ConfigError(
                f"config key scratch.{key}: expected a finetune.* key other than "
                f"finetune.seed, or one of {', '.join(SCRATCH_MODEL_KEYS)} (the "
                f"section overrides the fine-tune recipe)"
            )
    values = set_keys(
        to_dict(cfg.finetune),
        {k.split(".", 1)[1]: v for k, v in cfg.scratch.items() if k.startswith("finetune.")},
    )
    model = set_keys(
        to_dict(cfg.model),
        {k.split(".", 1)[1]: v for k, v in cfg.scratch.items() if k in SCRATCH_MODEL_KEYS},
    )
    out = copy.deepcopy(cfg)
    out.finetune = _build(FinetuneConfig, values, "scratch.finetune")
    out.model = _build(ModelConfig, model, "scratch.model")
    out.scratch = {}  # validated without it: applying the section again changes nothing
    try:
        out = validate(out)
    except ConfigError as e:
        raise ConfigError(f"{e} (in config section scratch)") from None
    out.scratch = dict(cfg.scratch)  # the tuned stage's config.yaml records its recipe
    return out


def _check_model(m: ModelConfig) -> None:
    """Shapes the model code needs: token grids, head splits, sine-cosine position widths."""

    def refuse(key: str, text: str) -> None:
        raise ConfigError(f"config key model.{key}: {text}")

    if m.img_size % m.patch_size:
        refuse("patch_size", f"{m.patch_size} does not divide model.img_size {m.img_size}")
    if m.embed_dim % 4:
        refuse("embed_dim", f"{m.embed_dim}; expected a multiple of 4 (sine-cosine positions)")
    if int(m.embed_dim * m.mlp_ratio) < 1:
        refuse(
            "mlp_ratio",
            f"{m.mlp_ratio:g} gives MLPs of {int(m.embed_dim * m.mlp_ratio)} "
            f"units at model.embed_dim {m.embed_dim}; expected at least 1",
        )
    if m.embed_dim % m.num_heads:
        refuse("num_heads", f"{m.num_heads} does not divide model.embed_dim {m.embed_dim}")
    heads = max(1, m.decoder_dim // 32)  # the fast-path decoder's 32-wide heads
    if m.decoder_dim % 4 or m.decoder_dim % heads:
        refuse(
            "decoder_dim",
            f"{m.decoder_dim}; expected a multiple of 4 that splits into "
            f"{heads} equal heads (e.g. 32, 64, 128)",
        )
    if (
        m.conv_stem
        and m.arch == "vit"
        and (m.patch_size & (m.patch_size - 1) or m.embed_dim < m.patch_size)
    ):
        refuse(
            "patch_size",
            f"{m.patch_size} with model.conv_stem; expected a power of two "
            f"no larger than model.embed_dim {m.embed_dim}",
        )
    if m.arch == "timm" and m.timm_name not in timm_vit_names():
        names = sorted(timm_vit_names())
        near = [n for n in names if n.startswith(m.timm_name)][:3] or difflib.get_close_matches(
            m.timm_name, names, n=3
        )
        refuse(
            "timm_name",
            f"{m.timm_name} is not one of timm's VisionTransformer models "
            f"({'near: ' + ', '.join(near) if near else 'e.g. vit_tiny_patch16_224'}; "
            f"timm.list_models(module='vision_transformer') lists them)",
        )
    if m.arch == "timm" and (m.conv_stem or m.rezero):
        refuse(
            "conv_stem" if m.conv_stem else "rezero",
            "applies to vitmim's own models; a timm model (model.arch=timm) keeps its "
            "patch embedding and residuals as model.timm_name defines them",
        )
    if m.arch == "unet-vit" and (m.global_pool, m.pos_embed) != ("avg", "sincos"):
        refuse(
            "global_pool" if m.global_pool != "avg" else "pos_embed",
            "only model.arch=vit has a class token or random position init; keep the "
            "defaults (avg, sincos) with unet-vit",
        )
    if m.arch == "unet-vit" and m.img_size % (2 ** len(m.unet_channels)):
        refuse(
            "unet_channels",
            f"{m.unet_channels} halves the image {len(m.unet_channels)} "
            f"times; 2^len must divide model.img_size {m.img_size}",
        )


@functools.cache
def timm_vit_names() -> frozenset[str]:
    """The model names timm's ``vision_transformer`` module registers (those whose entry point
    builds a ``VisionTransformer``), read from its source: importing timm loads torch, which
    would make a misspelt name cost seconds instead of milliseconds. tests/models/test_timm_vit.py
    checks that this is ``timm.list_models(module="vision_transformer")``."""
    spec = importlib.util.find_spec("timm")
    folders = spec.submodule_search_locations if spec else None
    if not folders:
        raise ConfigError("config key model.arch: timm needs the timm package (pip install timm)")
    source = Path(next(iter(folders))) / "models" / "vision_transformer.py"
    return frozenset(re.findall(r"^@register_model\s+def (\w+)\(", source.read_text(), re.M))


def _check_masking(img_size: int, p: PretrainConfig) -> None:
    if img_size % p.mask_patch:
        raise ConfigError(
            f"config key pretrain.mask_patch: {p.mask_patch} px cells must divide "
            f"the {img_size} px image"
        )
    cells = (img_size // p.mask_patch) ** 2
    k = round(p.mask_ratio * cells)
    if not 0 < k < cells:
        raise ConfigError(
            f"config key pretrain.mask_ratio: {p.mask_ratio:g} of {cells} cells "
            f"masks {k}; expected at least one masked and one visible cell"
        )


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def dump(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


# ---------------------------------------------------------------------------------------------
# dotted keys and shipped presets


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """Nested or dotted mapping -> {dotted key: value}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        out.update(flatten(v, key) if isinstance(v, dict) else {key: v})
    return out


def set_keys(values: dict, dotted: dict[str, Any], where: str | None = None) -> dict:
    """Deep copy of ``values`` with each dotted key set (sections created as needed); a key
    through a non-section is refused, naming ``where`` (default: the key)."""
    out = copy.deepcopy(values)
    for key, v in dotted.items():
        node = out
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{where or 'config key ' + key}: {part} is not a section")
        node[last] = v
    return out


PRESETS = Path(__file__).parent / "configs"


def preset_names() -> list[str]:
    return sorted(f.stem for f in PRESETS.glob("*.yaml"))


def preset_file(name: str) -> Path:
    """The YAML of a shipped preset; an unknown name is refused listing the known ones."""
    path = PRESETS / f"{name}.yaml"
    if not path.exists():
        raise ConfigError(f"--preset {name}: unknown (known: {', '.join(preset_names())})")
    return path
