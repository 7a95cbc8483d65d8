"""Typed configuration: dataclasses, YAML files, dotted ``--set key=value`` overrides.

One :class:`Config` describes a whole experiment (data, model, both training stages); each command
reads the sections it needs. Every value is checked against its annotation before any work
starts, and a bad one is refused with one line naming the key and what was expected.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from vitmim.errors import UserError


@dataclass
class DataConfig:
    source: Literal["auto", "tin", "folder", "unlabelled"] = "auto"
    path: str | None = None  # else $VITMIM_DATA, else the default download location
    classes: int | list[str] | None = 10  # first K of wnids.txt, an explicit list, or None = all
    class_seed: int | None = None  # with an int `classes`: draw K classes with this seed instead
    # with an int `classes` = K: 0 = the first K; k >= 1 = the k-th block of K classes of a fixed
    # shuffle of the classes after the first K (blocks disjoint from them and from each other)
    class_subset: int = 0
    label_fraction: float = 1.0  # share of training labels the classifier sees (per class)
    cache_dir: str | None = None  # else $VITMIM_CACHE, else ~/.cache/vitmim
    # How an image that is not img_size x img_size enters the cache: fit (scale, aspect lost),
    # pad (letterbox on white), crop (centre), error (refuse). auto: error for Tiny ImageNet,
    # whose images are all 64x64 (another size means a damaged copy), fit for other sources.
    resize: Literal["auto", "fit", "pad", "crop", "error"] = "auto"


@dataclass
class ModelConfig:
    arch: Literal["vit", "unet-vit"] = "vit"
    img_size: int = 64  # px
    patch_size: int = 8  # px; the ViT's token grid is img_size / patch_size
    embed_dim: int = 192
    depth: int = 6
    num_heads: int = 3
    mlp_ratio: float = 4.0
    conv_stem: bool = False  # Early Convolutions: small conv stack instead of the patch projection
    rezero: bool = False  # residual branches gated by a learnable scalar initialised at 0
    decoder_dim: int = 128  # fast-path (visible tokens only) decoder width
    decoder_depth: int = 1  # fast-path decoder blocks (MAE: depth 1 fine-tunes as well as 8)
    unet_channels: list[int] = field(default_factory=lambda: [32, 64, 128])  # one per 2x downsample
    skips: Literal["all", "none", "no-finest"] = "all"  # unet-vit decoder skip connections


@dataclass
class AugmentConfig:
    crop_pad: int = 4  # px of reflect padding for random-crop; 0 = off
    flip: bool = True
    trivial_augment: bool = False  # TrivialAugmentWide's ops and bins, one op per image
    mixup: float = 0.0  # Beta(a, a) parameter; 0 = off
    cutmix: float = 0.0  # Beta(a, a) parameter; 0 = off
    erasing: float = 0.0  # probability of RandomErasing (torchvision's defaults) per image


@dataclass
class StageConfig:
    epochs: int = 10
    batch_size: int = 128  # global batch (split across processes under torchrun)
    lr: float = 1e-3  # peak learning rate at batch_size
    min_lr: float = 1e-5  # floor of the cosine schedule
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    grad_clip: float = 0.0  # max grad norm; 0 = off
    drop_path: float = 0.0
    ema: float = 0.0  # EMA decay of weights per step; 0 = off
    seed: int = 0
    nan_policy: Literal["stop", "rollback"] = "stop"  # on a non-finite loss
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class PretrainConfig(StageConfig):
    # defaults measured on TIN-10 (README, "Results"): 20 cheap fast-path epochs on per-patch
    # normalised targets with 75 % of 8 px cells masked beat 10 epochs at 60 % on raw pixels
    epochs: int = 20
    lr: float = 1.5e-3
    mask_patch: int = 8  # px side of a square mask cell
    mask_ratio: float = 0.75  # share of cells masked, in (0, 1)
    fast: bool = True  # encoder sees visible tokens only when mask_patch % patch_size == 0
    loss: Literal["l1", "l2"] = "l1"
    loss_on: Literal["masked", "all"] = "masked"
    norm_pix: bool = True  # per-patch normalised targets (MAE's norm_pix_loss)


@dataclass
class FinetuneConfig(StageConfig):
    # batch 64 (twice the steps per epoch of 128, same lr) measured on TIN-10 (README, "Results"):
    # +3.1 points pre-trained, +1.7 scratch at 15 epochs, for 3-7 % more wall time
    epochs: int = 15
    batch_size: int = 64
    label_smoothing: float = 0.1
    layer_decay: float = 1.0  # layer-wise lr decay, pre-trained inits only; 1.0 = off
    drop_path: float = 0.1


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # bf16 autocast on a GPU; ignored on the CPU
    compile: bool = False  # torch.compile forward + loss + backward (CUDA graphs on a GPU)
    checkpoint_every: int = 0  # also checkpoint every N optimiser steps; 0 = once per epoch
    # the scratch baseline's own tuned recipe: dotted finetune.* overrides, e.g.
    # {finetune.lr: 2e-3, finetune.drop_path: 0.0}; empty = no tuned recipe (see tuned_scratch)
    scratch: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# type checking of values against annotations


def _check(value: Any, tp: Any, key: str) -> Any:
    """Return ``value`` converted to annotation ``tp``, or raise UserError naming ``key``."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _check(value, option, key)
            except UserError:
                continue
        raise UserError(f"config key {key}: expected {_describe(tp)}, got {value!r}")
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        choices = ", ".join(repr(c) for c in typing.get_args(tp))
        raise UserError(f"config key {key}: expected one of {choices}, got {value!r}")
    if origin is dict:  # a section of dotted overrides (``scratch``), checked where it is used
        if value is None or isinstance(value, dict):
            return flatten(value or {})
        raise UserError(f"config key {key}: expected a mapping of dotted keys, got {value!r}")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise UserError(f"config key {key}: expected a list, got {value!r}")
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
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"unsupported annotation {tp} for {key}")
    raise UserError(f"config key {key}: expected {_describe(tp)}, got {value!r}")


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(t) for t in typing.get_args(tp))
    if origin is list:
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    return {type(None): "null", bool: "true/false", int: "an integer", float: "a number",
            str: "a string"}.get(tp, str(tp))


def _build(cls: type, values: dict, prefix: str) -> Any:
    """Build dataclass ``cls`` from a (possibly partial) dict, refusing unknown keys."""
    if not isinstance(values, dict):
        raise UserError(f"config key {prefix or '<root>'}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for k in values:
        if k not in names:
            where = f"{prefix}.{k}" if prefix else k
            raise UserError(f"unknown config key {where} (known: {', '.join(sorted(names))})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = _build(tp, values.get(f.name, {}) or {}, key)
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


def read_yaml_mapping(path: str | Path, what: str = "config file") -> dict:
    """A YAML file whose top level is a mapping, or a one-line UserError naming the file."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: {what} not found")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserError(f"{p}: expected a mapping of keys at the top level")
    return data


def _read_yaml(path: str | Path) -> dict:
    p = Path(path)
    data = read_yaml_mapping(p)
    base = data.pop("base", None)  # a preset may build on another file, relative to itself
    if base:
        data = _merge(_read_yaml(p.parent / base), data)
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"pretrain.mask_ratio=0.4"`` -> (["pretrain", "mask_ratio"], 0.4); values are YAML."""
    if "=" not in text:
        raise UserError(f"--set {text}: expected key=value, e.g. pretrain.mask_ratio=0.4")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def overrides_to_dict(overrides: list[str]) -> dict:
    out: dict = {}
    for text in overrides:
        keys, value = parse_override(text)
        out = set_keys(out, {".".join(keys): value}, where=f"--set {text}")
    return out


def load_config(files: list[str | Path] = (), overrides: list[str] = (),
                base: dict | None = None) -> Config:
    """Defaults <- ``base`` <- each YAML file in order <- dotted overrides; then validated."""
    values: dict = dict(base or {})
    for f in files:
        values = _merge(values, _read_yaml(f))
    values = _merge(values, overrides_to_dict(list(overrides)))
    cfg = _build(Config, values, "")
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Cross-field checks that annotations cannot express."""
    m, p = cfg.model, cfg.pretrain
    if m.img_size % m.patch_size:
        raise UserError(f"config key model.patch_size: {m.patch_size} does not divide "
                        f"model.img_size {m.img_size}")
    if m.embed_dim % m.num_heads:
        raise UserError(f"config key model.num_heads: {m.num_heads} does not divide "
                        f"model.embed_dim {m.embed_dim}")
    if p.mask_patch <= 0 or m.img_size % p.mask_patch:
        raise UserError(f"config key pretrain.mask_patch: {p.mask_patch} px cells must divide "
                        f"the {m.img_size} px image")
    if not 0.0 < p.mask_ratio < 1.0:
        raise UserError(f"config key pretrain.mask_ratio: expected a number in (0, 1), "
                        f"got {p.mask_ratio}")
    if not 0.0 < cfg.data.label_fraction <= 1.0:
        raise UserError(f"config key data.label_fraction: expected a number in (0, 1], "
                        f"got {cfg.data.label_fraction}")
    if isinstance(cfg.data.classes, int) and cfg.data.classes <= 0:
        raise UserError(f"config key data.classes: expected a positive count, "
                        f"got {cfg.data.classes}")
    _validate_subset(cfg.data)
    if m.arch == "unet-vit" and (not m.unet_channels or min(m.unet_channels) <= 0):
        raise UserError(f"config key model.unet_channels: expected a non-empty list of positive "
                        f"channel counts, got {m.unet_channels}")
    if m.arch == "unet-vit" and m.img_size % (2 ** len(m.unet_channels)):
        raise UserError("config key model.unet_channels: 2^len must divide model.img_size")
    for name in ("pretrain", "finetune"):
        st: StageConfig = getattr(cfg, name)
        for k in ("epochs", "batch_size"):
            if getattr(st, k) <= 0:
                raise UserError(f"config key {name}.{k}: expected a positive integer, "
                                f"got {getattr(st, k)}")
        if st.lr <= 0:
            raise UserError(f"config key {name}.lr: expected a positive number, got {st.lr}")
    if cfg.scratch:  # kept as the recipe applies them (YAML 1.1 reads 2e-3 as text)
        tuned = flatten(to_dict(tuned_scratch(cfg)))
        cfg.scratch = {k: tuned[k] for k in cfg.scratch}


def _validate_subset(d: DataConfig) -> None:
    if d.class_subset < 0:
        raise UserError(f"config key data.class_subset: expected 0 (the first data.classes) or a "
                        f"block number >= 1, got {d.class_subset}")
    if d.class_subset and not isinstance(d.classes, int):
        raise UserError(f"config key data.class_subset: needs a class count in data.classes, "
                        f"got {d.classes!r}")
    if d.class_subset and d.class_seed is not None:
        raise UserError("config key data.class_subset: set either it or data.class_seed, "
                        "not both")


def tuned_scratch(cfg: Config) -> Config:
    """``cfg`` with its ``scratch`` overrides applied to the fine-tune recipe: the recipe of the
    baseline trained from random weights with its own tuning, so that the comparison does not
    rest on a scratch model that inherits a recipe tuned for the pre-trained one.

    Only ``finetune.*`` keys (the seed aside, which is the run's) may be overridden; an unknown
    key or bad value is refused naming ``scratch.<key>``.
    """
    for key in cfg.scratch:
        if not key.startswith("finetune.") or key == "finetune.seed":
            raise UserError(f"config key scratch.{key}: expected a finetune.* key other than "
                            f"finetune.seed (the section overrides the fine-tune recipe)")
    values = set_keys(to_dict(cfg.finetune), {k.split(".", 1)[1]: v
                                               for k, v in cfg.scratch.items()})
    out = copy.deepcopy(cfg)
    out.finetune = _build(FinetuneConfig, values, "scratch.finetune")
    out.scratch = {}  # validated without it: applying the section again changes nothing
    try:
        validate(out)
    except UserError as e:
        raise UserError(f"{e} (in config section scratch)") from None
    out.scratch = dict(cfg.scratch)  # the tuned stage's config.yaml records its recipe
    return out


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
                raise UserError(f"{where or 'config key ' + key}: {part} is not a section")
        node[last] = v
    return out


PRESETS = Path(__file__).parent / "configs"


def preset_names() -> list[str]:
    return sorted(f.stem for f in PRESETS.glob("*.yaml"))


def preset_file(name: str) -> Path:
    """The YAML of a shipped preset; an unknown name is refused listing the known ones."""
    path = PRESETS / f"{name}.yaml"
    if not path.exists():
        raise UserError(f"--preset {name}: unknown (known: {', '.join(preset_names())})")
    return path
