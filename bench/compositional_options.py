"""``--compositional '{...}'``: the compositional back-end's options for a bench script, as JSON.

Why: an option's figures (``logical_ratio: 0.8``, ``low_density: false``) must be rerunnable from ``bench/``; the
options are checked against ``CompositionalConfig`` before any work, so a misspelt one fails at once, in one line.
"""

from __future__ import annotations

import argparse
from typing import Any


def add_argument(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--compositional", default="{}",
                    help='options of the compositional back-end as JSON, e.g. \'{"low_density": false}\'')


def parse(ap: argparse.ArgumentParser, text: str) -> dict[str, Any]:
    """The options as a dict, or ``ap.error`` (one line, exit 2) when they are not valid."""
    from comgen.errors import ConfigError
    from comgen.generate.config import parse_compositional_options

    try:
        return parse_compositional_options(text)
    except ConfigError as exc:
        ap.error(str(exc))
