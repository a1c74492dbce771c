"""onnxruntime thread pools spinning after each run: what it does to interleaved timings.

Two sessions (a base run and a copy pruned to 79.5 % fewer params, both in deployment form)
are timed interleaved (each round runs each once) and then each alone, with
``session.intra_op.allow_spinning`` on (onnxruntime's default) and off (what
``resprune.export._onnx.session_options`` sets), at the given thread count and batch sizes.

    .venv/bin/python benchmarks/ort_spinning.py /work/runs/r56-B --threads 2
"""

from __future__ import annotations

import argparse
import copy
import shlex
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine_info, md_table  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--out", type=Path, default=RESULTS / "ort_spinning.md")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)

    import numpy as np
    import onnxruntime as ort

    import resprune
    from resprune.export._onnx import to_onnx_bytes
    from resprune.measure.compare import interleaved_medians
    from resprune.vacl import prune

    base = resprune.load(a.base).eval()
    shape = tuple(resprune.runs.input_shape_of(a.base, resprune.spec_of(base)))
    pruned = copy.deepcopy(base)
    prune(pruned, shape, target_params_reduction=0.795)
    graphs = {k: to_onnx_bytes(resprune.deploy(m, shape), shape, 18)
              for k, m in (("base", base), ("pruned", pruned))}

    def session(data: bytes, spin: bool):
        o = ort.SessionOptions()
        o.intra_op_num_threads = a.threads
        o.log_severity_level = 3
        o.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        return ort.InferenceSession(data, o, providers=["CPUExecutionProvider"])

    body = []
    for bs in a.batch_sizes:
        x = np.random.default_rng(0).standard_normal((bs, *shape)).astype(np.float32)
        for spin in (True, False):
            ss = {k: session(g, spin) for k, g in graphs.items()}
            fns = {k: (lambda s=s, x=x: s.run(None, {s.get_inputs()[0].name: x}))
                   for k, s in ss.items()}
            inter = interleaved_medians(fns, 3, a.repeats)
            alone = {k: interleaved_medians({k: fn}, 3, a.repeats)[k] for k, fn in fns.items()}
            for k in fns:
                body.append([bs, "on (default)" if spin else "off", k, f"{inter[k]:.2f}",
                             f"{alone[k]:.2f}"])
            del ss, fns
    cmd = "python benchmarks/ort_spinning.py " + " ".join(
        shlex.quote(x) for x in (argv if argv is not None else sys.argv[1:]))
    text = "\n".join([
        "# onnxruntime spin-waiting and interleaved timing\n",
        f"Command: `{cmd}`  ",
        f"Machine: {machine_info(1, ['onnxruntime'])}; {a.threads} intra-op threads per "
        "session.\n",
        f"`base`: `{a.base.name}`; `pruned`: a copy pruned to 79.5 % fewer params (exact "
        f"widths). Median ms of {a.repeats} runs, interleaved (each round runs both sessions, "
        "alternating order) and then each session alone.\n",
        md_table(["batch", "spinning", "model", "interleaved ms", "alone ms"], body),
    ])
    a.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
