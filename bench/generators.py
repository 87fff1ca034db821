"""Generator benchmark: the same CSDA detector trained with each anomaly source (also `comgen bench generators`).

    python bench/generators.py --out bench_runs/generators [--size 128] [--categories all] [--epochs 12] [--seeds 0,1]
    python bench/generators.py --rows 0 --compositional '{"logical_ratio": 0.8}'   # the full row and a variant
    python bench/generators.py --learn '{"k_max": 8}'   # every row with other learner options

Builds the built-in benchmark at the chosen size (if missing), runs every row and prints the Markdown table.
"""

from __future__ import annotations

import argparse
import sys

from comgen.errors import ComgenError
from comgen.benchmarks.cli import main_generators

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench_runs/generators")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--categories", default="all")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--rows", default="all", help="comma-separated row numbers (0-based), 'all' or 'none'")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds: each row runs once per seed, the table "
                                                     "gives the mean and the spread across seeds")
    parser.add_argument("--compositional", action="append", default=[],
                        help='an extra ComGEN row with these compositional options, as JSON (repeatable), '
                             'e.g. \'{"logical_ratio": 0.8}\'')
    parser.add_argument("--learn", default=None,
                        help='component learner options for every row, as JSON, e.g. \'{"k_max": 8}\'')
    args = parser.parse_args()
    try:
        main_generators(args.out, args.size, args.categories, args.epochs, args.rows, args.seeds,
                        args.compositional, args.learn)
    except ComgenError as exc:
        sys.exit(f"error: {exc}")
