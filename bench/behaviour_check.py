"""A fingerprint of comgen's behaviour on fixed seeds: run it before and after a refactor and compare.

Why: a change of layout (moved modules, typed configs, split functions) must not change what comgen makes. This runs
``comgen demo --quick`` (every stage, every built-in category, a few images at 64 px) and prints one JSON object: a
hash of every generated set's images and masks, of every component model's class maps, and every metric of the
evaluation. Two runs on the same code give the same JSON.

    python bench/behaviour_check.py --out /tmp/before > before.json
    python bench/behaviour_check.py --out /tmp/after > after.json && diff before.json after.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path


def _digest(files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _metrics(path: Path) -> dict:
    data = json.loads(path.read_text())
    out = {}
    for cat, r in data["categories"].items():
        for group, m in r["metrics"].items():
            for k, v in m.items():
                if isinstance(v, float):
                    out[f"{cat}/{group}/{k}"] = round(v, 6)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    from comgen.pipeline.demo import run_demo

    if args.out.exists():
        shutil.rmtree(args.out)
    run_demo(args.out, quick=True, log=lambda m: None)
    result = {}
    for run in sorted((args.out / "runs").iterdir()):
        if not (run / "stages.json").is_file():
            continue
        gen = [p for p in (run / "generated").rglob("*") if p.suffix == ".png" and p.parent.name in ("images", "masks")]
        comps = [p for p in (run / "components").rglob("*") if p.suffix in (".png", ".safetensors")]
        result[run.name] = {"generated": _digest(gen), "n_generated": len(gen), "components": _digest(comps),
                            "metrics": _metrics(run / "eval" / "metrics.json")}
    print(json.dumps(result, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
