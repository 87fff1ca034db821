"""The ``comgen`` command line. Each stage registers its commands from its own ``commands`` module.

Any ``ComgenError`` (bad input, missing artefact) is printed as one line ``error: <file>: <problem>``
with exit status 2, never as a traceback.
"""

from __future__ import annotations

import importlib
import sys

import typer

from comgen.errors import ComgenError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="ComGEN: component-aware logical anomaly generation and CSDA detection.")

# Every module listed here defines ``register(app: typer.Typer) -> None``.
COMMAND_MODULES = (
    "comgen.data.commands",        # synth, data check
    "comgen.components.commands",  # learn
    "comgen.generate.commands",    # generate
    "comgen.masks.commands",       # mask
    "comgen.detect.commands",      # train, predict, export
    "comgen.evaluate.commands",    # evaluate
    "comgen.pipeline.commands",    # run, demo, bench
)



@app.callback()
def _root() -> None:
    """ComGEN: component-aware logical anomaly generation and CSDA detection."""


@app.command("version")
def version() -> None:
    """Print the comgen version."""
    from comgen import __version__

    typer.echo(__version__)


for _name in COMMAND_MODULES:
    importlib.import_module(_name).register(app)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the Typer app, turning user-facing errors into one line and exit code 2."""
    from comgen.runtime import tune_allocator

    tune_allocator()
    try:
        app(args=argv, standalone_mode=False)
    except ComgenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        print("aborted", file=sys.stderr)
        return 130
    except Exception as exc:
        # Usage errors of the (vendored) click library: show them as click would, without a traceback.
        if hasattr(exc, "show") and isinstance(getattr(exc, "exit_code", None), int):
            exc.show()
            return exc.exit_code
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
