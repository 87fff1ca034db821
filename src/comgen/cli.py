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
    "comgen.serve.commands",       # serve
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


#: exit status of an interrupted command (128 + SIGINT, as shells report it)
INTERRUPTED = 130


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the Typer app and return its exit status (the console script exits with it).

    Why every path returns a code: in non-standalone mode Typer *returns* the status of ``typer.Exit`` and of
    Ctrl-C (130) instead of exiting, so dropping the return value made an interrupted ``comgen run`` exit 0 and a
    following ``&& deploy`` go on.
    """
    from comgen.runtime import tune_allocator

    try:
        tune_allocator()
        code = app(args=argv, standalone_mode=False)
    except ComgenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        code = INTERRUPTED
    except typer.Exit as exc:
        code = exc.exit_code
    except typer.Abort:
        print("aborted", file=sys.stderr)
        return INTERRUPTED
    except OSError as exc:  # the machine refused: a read-only or full disk, a permission, a vanished file
        print(f"error: {exc.filename or 'file system'}: {exc.strerror or exc.__class__.__name__}", file=sys.stderr)
        return 2
    except Exception as exc:
        # Usage errors of the (vendored) click library: show them as click would, without a traceback.
        if hasattr(exc, "show") and isinstance(getattr(exc, "exit_code", None), int):
            exc.show()
            return exc.exit_code
        raise
    code = code if isinstance(code, int) else 0
    if code == INTERRUPTED:
        print("interrupted: stopped by Ctrl-C; finished outputs are kept, rerun to continue", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
