"""``resprune demo``: the whole product on a real offline dataset in a few minutes."""

from __future__ import annotations

import argparse

from . import options


def add_parser(subs) -> None:
    p = subs.add_parser(
        "demo", help="train a small ResNet on offline real data and show its numbers",
        description="Needs no download: trains a small ResNet on the handwritten digits that "
                    "ship with scikit-learn and prints params, MACs, depth, latency and "
                    "accuracy.")
    p.add_argument("--out", default="runs/demo", metavar="DIR",
                   help="where the demo writes its runs (default runs/demo; a previous demo "
                        "there is replaced)")
    p.add_argument("--epochs", type=options.positive_int, default=15)
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    options.add_config(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    raise NotImplementedError
