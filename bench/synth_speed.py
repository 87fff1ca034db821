"""Time the built-in benchmark generation (``comgen synth``) and print a per-category table.

Default: the default benchmark (all categories, 256 px, 200 train / 40 validation / 150 test per category);
target under 60 s in total on the project's CPU machine. Example:

    python bench/synth_speed.py                       # full default benchmark into a temp folder
    python bench/synth_speed.py --size 128 --train 50 # a smaller run
    python bench/synth_speed.py --workers 1           # one process, per-category times
    python bench/synth_speed.py --family report       # the family's 12 report categories (target: 2 minutes)
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def _cpu() -> float:
    """CPU seconds of this process and its finished workers (robust to a shared, loaded machine)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--train", type=int, default=200)
    ap.add_argument("--validation", type=int, default=40)
    ap.add_argument("--test", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--categories", default="all", help="comma-separated, or all")
    ap.add_argument("--workers", type=int, default=0, help="processes (0 = one per CPU; 1 = per-category times)")
    ap.add_argument("--family", default="", help="seeds of the procedural family instead of --categories "
                                                 "(report, dev, or e.g. 1000-1011)")
    ap.add_argument("--out", type=Path, default=None, help="keep the benchmark here (default: temp folder)")
    args = ap.parse_args()

    from comgen.benchmarks.cli import family_option
    from comgen.data.synth import SynthConfig, generate_benchmark, generate_category
    from comgen.errors import ConfigError

    try:
        cats = ",".join(family_option(args.family)) if args.family else args.categories
    except ConfigError as exc:
        ap.error(str(exc))
    cfg = SynthConfig(size=args.size, n_train=args.train, n_validation=args.validation, n_test=args.test,
                      seed=args.seed, categories=cats)  # type: ignore[arg-type]
    n_img = cfg.n_train + cfg.n_validation + cfg.n_test
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "synth"
        generate_benchmark(out, cfg.replace(n_train=1, n_validation=1, n_test=0))  # imports + folder set-up
        times: dict[str, float] = {}
        cpu: dict[str, float] = {}
        t_all, c_all = time.perf_counter(), _cpu()
        if args.workers == 1:  # sequential: per-category times
            for name in cfg.selected():
                t0, c0 = time.perf_counter(), _cpu()
                generate_category(out, name, cfg)
                times[name], cpu[name] = time.perf_counter() - t0, _cpu() - c0
            cfg.save(out / "config.yaml")
        else:
            generate_benchmark(out, cfg, workers=args.workers)
        total, cpu_total = time.perf_counter() - t_all, _cpu() - c_all
        rows = []
        for name in cfg.selected():
            mib = sum(p.stat().st_size for p in (out / name).rglob("*") if p.is_file()) / 2**20
            dt = times.get(name, float("nan"))
            rows.append((name, n_img, dt, cpu.get(name, float("nan")), n_img / dt, mib))
    print(f"comgen synth: {args.size} px, {args.train}/{args.validation}/{args.test} per category, "
          f"seed {args.seed}, workers {args.workers}, {os.cpu_count()} CPUs visible, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '-')}")
    print(f"{'category':<16}{'images':>8}{'wall s':>10}{'cpu s':>10}{'img/s':>8}{'MiB':>8}")
    for name, n, dt, c, ips, mib in rows:
        print(f"{name:<16}{n:>8}{dt:>10.1f}{c:>10.1f}{ips:>8.1f}{mib:>8.1f}")
    n_all = sum(r[1] for r in rows)
    print(f"{'total':<16}{n_all:>8}{total:>10.1f}{cpu_total:>10.1f}{n_all / total:>8.1f}{sum(r[5] for r in rows):>8.1f}")
    limit = 120 if args.family else 60
    print(f"target: < {limit} s wall: {'PASS' if total < limit else 'over target'} "
          f"(cpu s = process + worker CPU time; wall exceeds it only when the machine is shared)")


if __name__ == "__main__":
    main()
