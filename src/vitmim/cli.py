"""Command line: ``vitmim <command>``. Each command is a small function over the library."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from vitmim.config import Config, load_config
from vitmim.errors import UserError

PRESETS = Path(__file__).parent / "configs"


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", action="append", default=[], metavar="YAML",
                   help="config file(s), applied in order")
    p.add_argument("--preset", help=f"a shipped config: {', '.join(preset_names())}")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="dotted override, e.g. --set pretrain.mask_ratio=0.4")
    p.add_argument("--data", help="data set: TIN zip/folder, class folders or image folder "
                                  "(default: $VITMIM_DATA)")


def preset_names() -> list[str]:
    return sorted(f.stem for f in PRESETS.glob("*.yaml"))


def resolve_config(args: argparse.Namespace) -> Config:
    files = []
    if getattr(args, "preset", None):
        preset = PRESETS / f"{args.preset}.yaml"
        if not preset.exists():
            raise UserError(f"--preset {args.preset}: unknown (known: {', '.join(preset_names())})")
        files.append(preset)
    files += args.config
    overrides = list(args.overrides)
    if getattr(args, "data", None):
        overrides.append(f"data.path={args.data}")
    return load_config(files, overrides)


def env_for(cfg: Config):
    import torch

    from vitmim.engine import setup_env
    torch.set_float32_matmul_precision("high")
    return setup_env(cfg.device, cfg.amp)


# ---------------------------------------------------------------------------------------------
# commands


def cmd_pretrain(args) -> None:
    from vitmim.stages import pretrain
    cfg = resolve_config(args)
    pretrain(cfg, Path(args.out), env_for(cfg), resume=args.resume)


def cmd_finetune(args) -> None:
    from vitmim.stages import finetune
    cfg = resolve_config(args)
    finetune(cfg, Path(args.out), env_for(cfg), init=args.init, resume=args.resume)


def cmd_run(args) -> None:
    from vitmim.pipeline import run_all
    cfg = resolve_config(args)
    run_all(cfg, Path(args.out), env_for(cfg), resume=args.resume,
            equal_compute_by=args.equal_compute)


def cmd_eval(args) -> None:
    from vitmim.predict import evaluate_run
    print(json.dumps(evaluate_run(args.run, args.data), indent=2))


def cmd_predict(args) -> None:
    from vitmim.predict import predict
    for path, top in zip(args.images, predict(args.run, args.images, args.topk)):
        print(path + "\t" + "\t".join(f"{name} ({p:.1%})" for name, p in top))


def cmd_reconstruct(args) -> None:
    from vitmim.predict import reconstruct
    out = reconstruct(args.run, args.images, Path(args.out), args.overrides, args.seed)
    print(f"wrote {out}")


def cmd_export(args) -> None:
    from vitmim.predict import export
    print(f"wrote {export(args.run, Path(args.out))}")


def cmd_data_download(args) -> None:
    from vitmim.data import OFFICIAL_URL, default_download_path, download
    dest = Path(args.dest) if args.dest else default_download_path()
    print(f"wrote {download(args.url or OFFICIAL_URL, dest, args.sha256)}")


def cmd_data_pack(args) -> None:
    from vitmim.data import load_splits, pack
    cfg = resolve_config(args)
    train, val = load_splits(cfg.data, cfg.model.img_size)
    out = pack(train, val, Path(args.out))
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, {len(train.classes)} classes)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vitmim", description="Masked-pixel pre-training of vision transformers for small "
        "image data sets: pre-train, fine-tune, compare with a scratch baseline.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="pre-train, fine-tune, train the baseline, print a summary")
    add_config_args(p)
    p.add_argument("--out", default="runs/run", help="folder for the three runs")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run")
    p.add_argument("--equal-compute", nargs="?", const="steps", choices=["steps", "flops"],
                   help="also train scratch as long as pre-train + fine-tune together, counted "
                   "in optimisation steps (the default) or in training FLOPs")
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("pretrain", help="masked-pixel pre-training of a restorer")
    add_config_args(p)
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--resume", action="store_true")
    p.set_defaults(fn=cmd_pretrain)

    p = sub.add_parser("finetune", help="fine-tune a classifier (scratch without --init)")
    add_config_args(p)
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--init", help="pre-trained run folder or .safetensors weights")
    p.add_argument("--resume", action="store_true")
    p.set_defaults(fn=cmd_finetune)

    p = sub.add_parser("eval", help="accuracy of a fine-tuned run on the validation set")
    p.add_argument("run", help="fine-tuned run folder or model.safetensors")
    p.add_argument("--data", help="data set (default: the one it was trained on)")
    p.set_defaults(fn=cmd_eval)

    p = sub.add_parser("predict", help="top-k class names for images")
    p.add_argument("run", help="fine-tuned run folder or model.safetensors")
    p.add_argument("images", nargs="+")
    p.add_argument("--topk", type=int, default=5)
    p.set_defaults(fn=cmd_predict)

    p = sub.add_parser("reconstruct", help="PNG grid: original | masked | restored")
    p.add_argument("run", help="pre-trained run folder or model.safetensors")
    p.add_argument("images", nargs="+")
    p.add_argument("--out", default="reconstruction.png")
    p.add_argument("--seed", type=int, default=0, help="seed of the random masks")
    p.add_argument("--set", action="append", default=[], dest="overrides",
                   help="e.g. --set pretrain.mask_ratio=0.4 (mask_patch must stay compatible)")
    p.set_defaults(fn=cmd_reconstruct)

    p = sub.add_parser("export", help="classifier weights that timm's VisionTransformer loads")
    p.add_argument("run", help="fine-tuned run folder or model.safetensors")
    p.add_argument("--out", required=True, help="output .safetensors (a .json with timm's "
                                                "constructor arguments is written beside it)")
    p.set_defaults(fn=cmd_export)

    data = sub.add_parser("data", help="download or pack data sets").add_subparsers(
        dest="data_command", required=True)
    p = data.add_parser("download", help="fetch the official Tiny ImageNet archive")
    p.add_argument("--url", help="archive URL (default: the official one)")
    p.add_argument("--dest", help="where to write it (default: the cache folder)")
    p.add_argument("--sha256", help="expected checksum")
    p.set_defaults(fn=cmd_data_download)
    p = data.add_parser("pack", help="write a class subset as a small archive")
    add_config_args(p)
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_data_pack)

    for name, fn in extra_commands():
        fn(sub, name)
    return parser


def extra_commands():
    """Commands that live beside the modules they drive: ``register(subparsers, name)``."""
    from vitmim import grid, probe, report
    return [("grid", grid.register), ("report", report.register), ("probe", probe.register)]


def main(argv: list[str] | None = None) -> int:
    from vitmim.errors import input_error_line, one_line
    args = build_parser().parse_args(argv)
    t0 = time.time()
    try:
        args.fn(args)
    except UserError as e:
        print(f"vitmim: error: {one_line(e)}", file=sys.stderr)
        return UserError.exit_code
    except KeyboardInterrupt:  # how to continue: training resumes by flag, a grid by rerunning
        hint = {"grid": "; rerun the same command to continue (finished runs are kept)",
                **dict.fromkeys(("run", "pretrain", "finetune"), "; continue with --resume")}
        print(f"vitmim: interrupted{hint.get(args.command, '')}", file=sys.stderr)
        return 130
    except Exception as e:  # a damaged or unreadable input that no reader anticipated
        line = input_error_line(e)
        if line is None:
            raise
        print(f"vitmim: error: {line}", file=sys.stderr)
        return UserError.exit_code
    if args.command in ("run", "pretrain", "finetune") and os.environ.get("RANK", "0") == "0":
        print(f"done in {time.time() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
