"""``learn_tokens_into_run``: the work of ``comgen learn --backend diffusion`` (tokens into RUN/diffusion).

Why separate from the generator: learning is the expensive GPU step (minutes to an hour on SD 1.5); doing it
once in ``comgen learn`` lets every later ``comgen generate --backend diffusion`` (and each ``--shard``) reuse
the tokens, which the generator loads whenever RUN/diffusion/learned.json matches its learn config.
"""

from __future__ import annotations

from pathlib import Path

from comgen.generate.diffusion.config import DiffusionConfig
from comgen.records import Sample
from comgen.rundir import RunDir

STAGE = "learn_diffusion"


def token_dir(run: RunDir) -> Path:
    return run.root / "diffusion"


def learn_tokens_into_run(run: RunDir, samples: list[Sample], cfg: DiffusionConfig):
    """Learn (or resume, or reuse) the component tokens for ``run``; needs RUN/components (``comgen learn``).

    Returns the fitted ``DiffusionGenerator`` so a caller may generate straight away.
    """
    from comgen.generate.diffusion.generator import DiffusionGenerator

    cfg = cfg.replace(token_dir=str(cfg.token_dir or token_dir(run)))
    gen = DiffusionGenerator(cfg)
    gen.fit(samples, run)
    cfg.save(Path(cfg.token_dir) / "diffusion.yaml")
    run.mark_done(STAGE, cfg.learn.hash(), {"tokens": str(cfg.token_dir), "sd_model": cfg.sd_model})
    return gen
