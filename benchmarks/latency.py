"""Does the measured CPU speed-up follow the MACs? Pruned ResNet-56s, eager and onnxruntime.

For a base run and pruned models, every model is timed interleaved with the others (each
round times every model once; the median of each model's rounds is kept), at batch 1, 64 and
256, in PyTorch eager and onnxruntime, with 1 and 2 threads. Reported per pruned model:
the MACs factor (base MACs / pruned MACs), the measured speed-up (base ms / pruned ms) and
their ratio (1.0: the time saved is exactly the MACs saved).

Besides finished runs (``--runs``), the script prunes copies of the base to given params
targets with exact widths and with widths rounded to multiples of 8 (``vacl.prune(...,
round_to=8)``): latency depends on the architecture, not on the weights, so these are timed
without training (their accuracy is not measured here). ``--pad`` adds every model whose widths
are not multiples of 8 padded to them with zero channels (``resprune export --pad-channels 8``:
the same logits, more MACs, the runtime's channel blocks).

    .venv/bin/python benchmarks/latency.py /work/runs/r56-B --runs /work/runs/r56-vacl \\
        --targets 0.5 0.795 --out benchmarks/results/latency.md
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine_info, md_table  # noqa: E402


def models_to_time(base_dir: Path, runs: list[Path], targets: list[float], multiple: int,
                   pad: bool = False):
    import resprune
    from resprune.vacl import prune

    base = resprune.load(base_dir).eval()
    shape = tuple(resprune.runs.input_shape_of(base_dir, resprune.spec_of(base)))
    models = {"base": base}
    for t in targets:
        for rt in (None, multiple):
            m = copy.deepcopy(base)
            prune(m, shape, target_params_reduction=t, round_to=rt)
            models[f"vacl {100 * t:g} % params" + ("" if rt is None else f", widths /{rt}")] = (
                m.eval())
    for r in runs:
        models[r.name] = resprune.load(r).eval()
    if pad:
        from resprune.export import pad_channels
        from resprune.export.pad import needs_padding

        for name, m in list(models.items()):
            if name != "base" and needs_padding(m, multiple):
                models[f"{name}, padded /{multiple}"] = pad_channels(m, multiple)
    return models, shape


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("base", type=Path, help="base run directory")
    p.add_argument("--runs", type=Path, nargs="*", default=[], help="pruned run directories")
    p.add_argument("--targets", type=float, nargs="*", default=[0.5, 0.795],
                   help="params reductions of the untrained pruned architectures")
    p.add_argument("--round-to", type=int, default=8)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64, 256])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--pad", action="store_true",
                   help="also time every model with widths that are not multiples of "
                        "--round-to padded to them with zero channels (resprune.export."
                        "pad_channels, the same logits: export --pad-channels N)")
    p.add_argument("--no-folded", action="store_true",
                   help="skip the table of folded (deployment form) eager timings")
    p.add_argument("--out", default=str(RESULTS / "latency.md"))
    a = p.parse_args(argv)

    from resprune.measure import count_macs, count_params
    from resprune.measure.compare import time_models

    models, shape = models_to_time(a.base, a.runs, a.targets, a.round_to, a.pad)
    macs = {k: count_macs(m, shape) for k, m in models.items()}
    params = {k: count_params(m) for k, m in models.items()}
    body = []
    for threads in a.threads:
        torch.set_num_threads(threads)
        rows, skipped = time_models(models, shape, batch_sizes=a.batch_sizes,
                                    runtimes=("eager", "onnxruntime"), devices=["cpu"],
                                    warmup=2, repeats=a.repeats)
        for line in skipped:
            print(f"skipped: {line}", file=sys.stderr)
        for row in rows:
            ms = row["ms"]
            for name in models:
                if name == "base":
                    continue
                factor = macs["base"] / macs[name]
                speed = ms["base"] / ms[name]
                body.append([name, f"{100 * (1 - params[name] / params['base']):.1f} %",
                             f"{factor:.2f}x", row["runtime"], threads, row["batch"],
                             f"{ms['base']:.1f}", f"{ms[name]:.1f}", f"{speed:.2f}x",
                             f"{speed / factor:.2f}"])
    # the deployment form (gates and BNs folded, resprune.deploy) in eager PyTorch
    from resprune import deploy

    folded_body = []
    torch.set_num_threads(1)
    if not a.no_folded:
        pairs = {}
        for name, m in models.items():
            pairs[name] = m
            pairs[f"{name} (folded)"] = deploy(m, shape)
        rows, _ = time_models(pairs, shape, batch_sizes=a.batch_sizes, runtimes=("eager",),
                              devices=["cpu"], warmup=2, repeats=a.repeats)
        for row in rows:
            for name in models:
                ms, fms = row["ms"][name], row["ms"][f"{name} (folded)"]
                folded_body.append([name, row["batch"], f"{ms:.1f}", f"{fms:.1f}",
                                    f"{ms / fms:.2f}x"])
    cmdline = " ".join(["benchmarks/latency.py", *(argv if argv is not None else sys.argv[1:])])
    text = "\n".join([
        "# Measured CPU speed-up against the MACs factor\n",
        f"Command: `.venv/bin/python {cmdline}`  ",
        f"Machine: {machine_info(1, ('onnxruntime',))}.\n",
        "Every model is timed interleaved with the others (median of "
        f"{a.repeats} rounds after 2 warm-up rounds), per thread count; "
        "`speed-up / MACs factor` = 1.0 means the time saved is exactly the MACs saved. "
        "Models named `vacl N % params` are copies of the base pruned by `vacl.prune` "
        "(by layer-normalised RMS, no training): latency depends on the architecture only."
        + (f" Models named `..., padded /{a.round_to}` are the model before them padded with "
           f"zero channels to multiples of {a.round_to} (`resprune export --pad-channels "
           f"{a.round_to}`: the same logits; its MACs factor counts the added zeros)."
           if a.pad else "") + "\n",
        md_table(["model", "params removed", "MACs factor", "runtime", "threads", "batch",
                  "base ms", "pruned ms", "speed-up", "speed-up / MACs factor"], body),
    ] + ([] if a.no_folded else [
        "## The deployment form in eager PyTorch (1 thread)\n",
        "`resprune.deploy(model)` folds priority gates and BatchNorms into the convolutions "
        "(same logits, checked); each model timed interleaved with its folded form.\n",
        md_table(["model", "batch", "ms", "folded ms", "speed-up from folding"], folded_body),
    ])) + "\n"
    print(text)
    if a.out != "-":
        Path(a.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
