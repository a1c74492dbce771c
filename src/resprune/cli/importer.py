"""``resprune import``: a checkpoint a user already has -> a resprune run directory."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from ..checkpoint import save
from ..data import with_preprocess
from ..errors import UserError
from ..importing import PRESETS, import_checkpoint
from ..io import atomic_write_text
from ..measure.summary import measure_model
from ..models import list_models
from ..models.preprocess import describe
from ..report import fmt_acc, fmt_count, markdown_table
from ..runs import prepare_out, write_summary
from . import common, options
from .train import model_options


def add_parser(subs) -> None:
    presets = "; ".join(f"{p.name}: {p.about}" for p in PRESETS.values())
    p = subs.add_parser(
        "import", help="import a trained checkpoint (torchvision, akamaster, own state_dict)",
        description="Load a checkpoint you already have into a zoo model and write a run "
                    "directory that every other command takes. .pt/.pth/.th/.tar files are "
                    "read with torch.load(weights_only=True) only (a file that needs pickled "
                    "code is refused, nothing is executed), .safetensors with safetensors. "
                    "Wrappers ({'state_dict': ...}, {'model': ...}, {'model_state_dict': ...}) "
                    "and the prefixes module. (DataParallel/DDP) and _orig_mod. "
                    "(torch.compile) are removed; loading is strict. The model records its "
                    f"preprocessing, which later commands use. Presets: {presets}.")
    p.add_argument("file", metavar="FILE", help="checkpoint file (.pt .pth .th .tar "
                   ".safetensors)")
    g = p.add_argument_group("model")
    g.add_argument("--model", required=True, choices=list_models(), metavar="NAME",
                   help=f"the zoo architecture the checkpoint was trained as: "
                        f"{', '.join(list_models())}")
    g.add_argument("--num-classes", type=options.positive_int,
                   help="classes (default: the checkpoint's classifier)")
    g.add_argument("--shortcut", choices=["A", "B"],
                   help="CIFAR ResNets: A = zero padding (default), B = 1x1 conv + BN")
    g.add_argument("--width", type=options.positive_int, help="CIFAR models: first-stage width")
    g.add_argument("--cardinality", type=options.positive_int, help="ResNeXt-29 cardinality")
    g.add_argument("--base-width", type=options.positive_int, help="ResNeXt-29 base width")
    g.add_argument("--preset", choices=["auto", *PRESETS], default="auto",
                   help="key names and preprocessing of the checkpoint's family (auto: "
                        "akamaster when the classifier is 'linear', torchvision for ImageNet "
                        "models, else plain)")
    g.add_argument("--map", nargs="+", default=[], metavar="OLD=NEW",
                   help="rename key prefixes (after the preset's), e.g. --map head.=fc.")
    g = p.add_argument_group("preprocessing (default: the preset's)")
    g.add_argument("--input-size", type=options.positive_int, help="square input side in px")
    g.add_argument("--mean", type=options.finite_float, nargs="+",
                   help="per-channel mean of inputs scaled to [0, 1]")
    g.add_argument("--std", type=options.positive_float, nargs="+", help="per-channel std")
    g.add_argument("--resize", type=options.positive_int,
                   help="large images: shorter side before the center crop")
    options.add_data(p, required=False)
    g = p.add_argument_group("evaluation (with --data)")
    g.add_argument("--batch-size", type=options.positive_int, default=256)
    g.add_argument("--seed", type=options.nonneg_int, default=0,
                   help="seed of the validation split (0)")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    g.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    options.add_output(p)
    options.add_config(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    started = time.time()
    if args.resume:
        raise UserError("import has nothing to resume; run it again with --overwrite")
    if not Path(args.file).is_file():
        raise UserError(f"checkpoint file {args.file} does not exist")
    pre = {"input_size": args.input_size, "mean": args.mean, "std": args.std,
           "resize": args.resize}
    result = import_checkpoint(args.file, args.model, num_classes=args.num_classes,
                               preset=args.preset, key_map=args.map, preprocess=pre,
                               **{k: v for k, v in model_options(args).items() if k != "gates"})
    model = result.model
    bundle = None
    if args.data is not None:  # checked before anything is written
        bundle = common.load_data(args)
        spec = {"num_classes": model.fc.out_features, "in_channels": model.conv1.in_channels}
        args.run = args.file
        common.check_data_fits(bundle, spec, args)
        with_preprocess(bundle, model.preprocess)
        common.adopt_preprocess(model, bundle)
    out, _ = prepare_out(args.out, overwrite=args.overwrite)
    common.record_command(args, out, False)
    save(model, out)
    shape = common.model_input_shape(model, bundle)
    loaders: dict[str, Any] = {}
    if bundle is not None:
        device = common.resolve_device(args.device)
        _, val, test = common.make_loaders(bundle, args, device)
        loaders = {"val": val, "test": test}
        summary = common.base_summary("import", args.model, args, bundle, shape, started)
    else:
        device = "cpu"
        summary = {"kind": "import", "model": args.model, "input_shape": list(shape),
                   "config": common.resolved(args)}
    summary.update(measure_model(model, shape, loaders, device=device, precision=args.precision))
    summary["source"] = result.source
    summary["preset"] = result.preset
    summary["preprocess"] = model.preprocess
    summary["epochs"] = 0
    summary["seconds"] = round(time.time() - started, 2)
    write_summary(out, summary)
    write_report(out, summary)
    common.emit(args, summary, common.metrics_table([(args.model, summary)])
                + f"\nimported {args.file} (preset {result.preset}; preprocessing: "
                  f"{describe(model.preprocess)})\nrun directory: {out}")
    return 0


def write_report(out: Path, summary: dict[str, Any]) -> None:
    src = summary["source"]
    rows = [[fmt_count(summary["params"]), fmt_count(summary["macs"]), summary["depth"],
             fmt_acc(summary.get("val_top1")), fmt_acc(summary.get("top1"))]]
    lines = [f"# Imported model: {summary['model']}\n",
             f"- source: `{src.get('file')}` (sha256 `{src.get('sha256')}`), preset "
             f"{summary['preset']}",
             f"- preprocessing: {describe(summary.get('preprocess'))}"]
    if src.get("metadata"):
        lines.append(f"- the file's own metadata: {src['metadata']}")
    lines += ["", markdown_table(["params", "MACs", "depth", "val top-1", "test top-1"], rows)]
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
