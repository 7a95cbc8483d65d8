"""Command line: ``vitmim <command>``. Each command is a small function over the library.

Nothing imports this module. The library (torch and all) is imported inside the command functions,
so ``vitmim --help`` and a mistyped option answer at once instead of after the imports.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import vitmim
from vitmim.baselines import BASELINES
from vitmim.config import preset_names
from vitmim.errors import UserError
from vitmim.tracking import BACKENDS, LOG_EVERY

# how `vitmim run --equal-compute` may count: those of the equal-compute baselines
EQUAL_COMPUTE = list(dict.fromkeys(b.equal for b in BASELINES.values() if b.equal))


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-c",
        "--config",
        action="append",
        default=[],
        metavar="YAML",
        help="config file(s), applied in order",
    )
    p.add_argument("--preset", help=f"a shipped config: {', '.join(preset_names())}")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="overrides",
        help="dotted override, e.g. --set pretrain.mask_ratio=0.4",
    )
    p.add_argument(
        "--data",
        help="data set: TIN zip/folder, class folders or image folder (default: $VITMIM_DATA)",
    )


def add_run_args(p: argparse.ArgumentParser, what: str) -> None:
    """A finished run, measured on the data it was trained on unless ``--data`` says otherwise."""
    p.add_argument("run", help=what)
    p.add_argument("--data", help="data set (default: the one it was trained on)")


def add_device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device",
        default="auto",
        help="auto (the best available: a CUDA GPU, "
        "else MPS, else the CPU) | cpu | cuda | cuda:N | mps",
    )


def add_checkpoint_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint",
        choices=["last", "best"],
        default="last",
        help="last: the final model (default); best: the epoch with the best keep_best "
        "validation metric (RUN/best.safetensors)",
    )


def add_training_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume", action="store_true", help="continue an interrupted run")
    p.add_argument(
        "--log",
        choices=BACKENDS,
        help="also mirror metrics and the training loss to RUN/tensorboard/ (with "
        "reconstructions), RUN/metrics.csv, or an MLflow run named after RUN in MLflow's "
        "tracking store (MLFLOW_TRACKING_URI); metrics.jsonl stays the record",
    )
    p.add_argument(
        "--log-every",
        type=int,
        default=LOG_EVERY,
        metavar="N",
        help=f"optimisation steps between training-loss points (default: {LOG_EVERY})",
    )


# ---------------------------------------------------------------------------------------------
# commands


def _training(args) -> dict:
    """The keyword arguments every training function of the API takes, from the options."""
    return {
        "out": args.out,
        "data": args.data,
        "preset": args.preset,
        "config": args.config,
        "overrides": list(args.overrides),
        "resume": args.resume,
        "log": args.log,
        "log_every": args.log_every,
    }


def cmd_pretrain(args) -> None:
    vitmim.pretrain(**_training(args))


def cmd_finetune(args) -> None:
    vitmim.finetune(init=args.init, **_training(args))


def cmd_run(args) -> None:
    vitmim.run(equal_compute=args.equal_compute, **_training(args))


def cmd_eval(args) -> None:
    print(json.dumps(vitmim.evaluate(args.run, args.data, args.device, args.checkpoint), indent=2))


def cmd_predict(args) -> None:
    for path, top in zip(
        args.images,
        vitmim.predict(args.run, list(args.images), args.topk, args.device, args.checkpoint),
    ):
        print(path + "\t" + "\t".join(f"{name} ({p:.1%})" for name, p in top))


def cmd_reconstruct(args) -> None:
    out = vitmim.reconstruct(
        args.run,
        args.images,
        args.out,
        args.seed,
        list(args.overrides),
        args.device,
        args.checkpoint,
    )
    print(f"wrote {out}")


def cmd_export(args) -> None:
    out = vitmim.export(args.run, args.out, args.format, args.encoder, args.checkpoint)
    print(f"wrote {out}")


def cmd_data_download(args) -> None:
    print(f"wrote {vitmim.download_data(args.dest, args.url, args.sha256)}")


def cmd_data_pack(args) -> None:
    out = vitmim.pack_data(args.out, args.data, args.preset, args.config, list(args.overrides))
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB)")


def cmd_grid(args) -> None:
    vitmim.grid(
        args.spec,
        args.out,
        args.data,
        args.jobs,
        args.executor,
        args.config,
        list(args.overrides),
        args.dry_run,
        args.wait,
        args.slurm,
        args.until,
    )


def cmd_search(args) -> None:
    from vitmim.lab.search import search

    path = search(args.spec, args.data, args.jobs, args.trials, args.until)
    if path:
        print(f"wrote {path}")


def cmd_report(args) -> None:
    path = vitmim.report(args.runs_dir, args.out)
    print((path.parent / "report.md").read_text().split("\n## Plots")[0].strip())
    print(f"\nwrote {path.parent}/report.{{md,csv,html}}, runs.csv and plots/")


def cmd_probe(args) -> None:
    print(json.dumps(vitmim.probe(args.run, args.data, args.device, args.k), indent=2))


class VersionAction(argparse.Action):
    """``--version``: looks the version up only when asked (importlib.metadata costs 0.13 s)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        from vitmim import __version__

        print(f"vitmim {__version__}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vitmim",
        description="Masked-pixel pre-training of vision transformers for small "
        "image data sets: pre-train, fine-tune, compare with a scratch baseline.",
    )
    parser.add_argument(
        "--version", action=VersionAction, nargs=0, help="print the installed version and exit"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "run",
        help="pre-train, fine-tune, train the baselines (scratch with the "
        "same recipe, and with its own recipe where config section scratch sets "
        "one), print a summary",
    )
    add_config_args(p)
    p.add_argument("--out", default="runs/run", help="folder for its stages and summary")
    p.add_argument(
        "--equal-compute",
        nargs="?",
        const="steps",
        choices=EQUAL_COMPUTE,
        help="also train scratch as long as pre-train + fine-tune together, counted "
        "in optimisation steps (the default) or in training FLOPs",
    )
    add_training_args(p)
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("pretrain", help="masked-pixel pre-training of a restorer")
    add_config_args(p)
    p.add_argument("--out", required=True, help="run folder")
    add_training_args(p)
    p.set_defaults(fn=cmd_pretrain)

    p = sub.add_parser("finetune", help="fine-tune a classifier (scratch without --init)")
    add_config_args(p)
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--init", help="pre-trained run folder or .safetensors weights")
    add_training_args(p)
    p.set_defaults(fn=cmd_finetune)

    p = sub.add_parser("eval", help="accuracy of a fine-tuned run on the validation set")
    add_run_args(p, "fine-tuned run folder or model.safetensors")
    add_device_arg(p)
    add_checkpoint_arg(p)
    p.set_defaults(fn=cmd_eval)

    p = sub.add_parser("predict", help="top-k class names for images")
    p.add_argument("run", help="fine-tuned run folder or model.safetensors")
    p.add_argument("images", nargs="+")
    p.add_argument("--topk", type=int, default=5)
    add_device_arg(p)
    add_checkpoint_arg(p)
    p.set_defaults(fn=cmd_predict)

    p = sub.add_parser("reconstruct", help="PNG grid: original | masked | restored")
    p.add_argument("run", help="pre-trained run folder or model.safetensors")
    p.add_argument("images", nargs="+")
    p.add_argument("--out", default="reconstruction.png")
    p.add_argument("--seed", type=int, default=0, help="seed of the random masks")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        dest="overrides",
        help="e.g. --set pretrain.mask_ratio=0.4 (mask_patch must stay compatible)",
    )
    add_device_arg(p)
    add_checkpoint_arg(p)
    p.set_defaults(fn=cmd_reconstruct)

    p = sub.add_parser("export", help="weights that timm loads (a file or a model folder)")
    p.add_argument(
        "run",
        help="fine-tuned run folder or model.safetensors (with --encoder: a pre-trained one too)",
    )
    p.add_argument(
        "--out",
        required=True,
        help="file: output .safetensors (timm's constructor "
        "arguments in a .json beside it); timm: the model folder",
    )
    p.add_argument(
        "--format",
        choices=["file", "timm"],
        default="file",
        help="timm: model.safetensors + config.json, loaded by timm.create_model("
        "'local-dir:OUT', pretrained=True) and uploadable to the Hugging Face Hub",
    )
    p.add_argument(
        "--encoder",
        action="store_true",
        help="the backbone alone, no head (timm num_classes=0: pooled features)",
    )
    add_checkpoint_arg(p)
    p.set_defaults(fn=cmd_export)

    data = sub.add_parser("data", help="download or pack data sets").add_subparsers(
        dest="data_command", required=True
    )
    p = data.add_parser("download", help="fetch the official Tiny ImageNet archive")
    p.add_argument("--url", help="archive URL (default: the official one)")
    p.add_argument("--dest", help="where to write it (default: the cache folder)")
    p.add_argument("--sha256", help="expected checksum")
    p.set_defaults(fn=cmd_data_download)
    p = data.add_parser("pack", help="write a class subset as a small archive")
    add_config_args(p)
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_data_pack)

    add_lab_commands(sub)
    return parser


def add_lab_commands(sub) -> None:
    """grid, report and probe: experiments over many runs."""
    p = sub.add_parser("grid", help="run a grid of pre-training variants, seeds and baselines")
    p.add_argument("spec", help="grid spec YAML (see configs/grids/)")
    p.add_argument("--out", help="grid folder (default: the spec's `out`, else runs/<spec name>)")
    p.add_argument(
        "--executor",
        choices=["local", "inline", "slurm", "submitit-local"],
        default="local",
        help="local: one subprocess per run, one after another; "
        "inline: in this process; slurm: a submitit job array (submitit-local: the "
        "same through submitit's LocalExecutor)",
    )
    p.add_argument(
        "--slurm",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="submitit/Slurm parameter, e.g. --slurm slurm_partition=gpu "
        "--slurm gpus_per_node=1 --slurm timeout_min=600",
    )
    p.add_argument(
        "--wait",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="wait for submitted jobs (default: yes except for slurm)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="local executor: N runs at once on the one device, each its own process "
        "(on a CPU each gets 1/N of the cores)",
    )
    p.add_argument(
        "--until",
        metavar="HH:MM",
        help="local executor, a spec with records: start only the runs estimated to end by "
        "then (the next HH:MM on this clock), from the recorded cost per image pass; the rest "
        "are left for the next invocation",
    )
    p.add_argument("--dry-run", action="store_true", help="list the runs and their status")
    p.add_argument(
        "-c",
        "--config",
        action="append",
        default=[],
        metavar="YAML",
        help="config file(s) for every run, over the spec's config, e.g. the tuned "
        "scratch recipe that `vitmim report` of a scratch search writes",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        dest="overrides",
        metavar="KEY=VALUE",
        help="override for every run, e.g. --set model.depth=4",
    )
    p.add_argument("--data", help="data set for every run (default: the spec's, or $VITMIM_DATA)")
    p.set_defaults(fn=cmd_grid)

    p = sub.add_parser(
        "search",
        help="search the scratch baseline's recipe (Optuna, stored on disk: rerun to continue)",
    )
    p.add_argument("spec", help="search spec YAML (see configs/search/)")
    p.add_argument("--data", help="data set (default: $VITMIM_DATA)")
    p.add_argument(
        "--jobs",
        type=int,
        default=2,
        metavar="N",
        help="fine-tunes of a trial at once (one per class subset; each gets 1/N of the cores)",
    )
    p.add_argument(
        "--trials",
        type=int,
        metavar="N",
        help="stop after N more trials (default: when the spec's budget is spent)",
    )
    p.add_argument(
        "--until",
        metavar="HH:MM",
        help="start a trial only if the longest it may take (the space's most epochs at the "
        "slowest epoch run so far) ends by then; the recipe is written once the budget is spent",
    )
    p.set_defaults(fn=cmd_search)

    p = sub.add_parser(
        "report",
        help="tables, plots and an HTML page from a grid's run folders or one `vitmim run` folder",
    )
    p.add_argument(
        "runs_dir",
        help="the grid folder (`vitmim grid --out`) or a `vitmim run` folder (`vitmim run --out`)",
    )
    p.add_argument("--out", help="report folder (default: RUNS_DIR/report)")
    p.set_defaults(fn=cmd_report)

    p = sub.add_parser("probe", help="k-NN and linear-probe accuracy of a run's frozen backbone")
    add_run_args(p, "pre-trained or fine-tuned run folder (writes probe.json there)")
    add_device_arg(p)
    # probes.KNN_K, written out: importing probe would load torch for every --help
    p.add_argument("--k", type=int, default=20, help="neighbours in the k-NN vote")
    p.set_defaults(fn=cmd_probe)


# how to pick up an interrupted command where it stopped
RESUME = "; continue with --resume"
CONTINUE = {
    "run": RESUME,
    "pretrain": RESUME,
    "finetune": RESUME,
    "grid": "; rerun the same command to continue: finished runs are skipped and "
    "interrupted ones resume from their checkpoints",
}


def main(argv: list[str] | None = None) -> int:
    from vitmim.errors import fold_lines, input_error_line
    from vitmim.lifetime import sigterm_as_interrupt

    args = build_parser().parse_args(argv)
    sigterm_as_interrupt()
    t0 = time.time()
    try:
        args.fn(args)
    except UserError as e:
        print(f"vitmim: error: {fold_lines(e)}", file=sys.stderr)
        return UserError.exit_code
    except KeyboardInterrupt:
        print(f"vitmim: interrupted{CONTINUE.get(args.command, '')}", file=sys.stderr)
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
