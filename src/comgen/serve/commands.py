"""CLI of the server: ``comgen serve RUN``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    """Add ``serve`` to the app."""

    @app.command("serve")
    def serve_cmd(
        run_dir: Path = typer.Argument(..., help="run directory with a trained detector"),
        host: str = typer.Option("127.0.0.1", "--host", help="address to listen on (0.0.0.0: every interface)"),
        port: int = typer.Option(8000, "--port", help="TCP port (0: any free port, printed at start)"),
        max_batch: int = typer.Option(8, "--max-batch", help="most images one detector call runs"),
        batch_wait_ms: float = typer.Option(5.0, "--batch-wait-ms",
                                            help="how long a request waits for others to share its batch"),
        max_upload_mb: float = typer.Option(20.0, "--max-upload-mb", help="largest upload accepted (413 above)"),
        threshold: Optional[float] = typer.Option(None, "--threshold", help="pass/fail threshold "
                                                  "(default: the run's, see `comgen calibrate`)"),
    ) -> None:
        """Serve the trained detector over HTTP: GET /health, POST /predict (score, pass/fail, map PNG)."""
        from comgen.errors import ConfigError
        from comgen.serve.config import ServeConfig

        cfg = ServeConfig(host=host, port=port, max_batch=max_batch, batch_wait_ms=batch_wait_ms,
                          max_upload_mb=max_upload_mb, threshold=threshold)
        try:
            from comgen.serve.server import serve
        except ModuleNotFoundError as exc:
            raise ConfigError("comgen serve", f"needs the serve extra (missing {exc.name}): "
                                              "pip install 'comgen[serve]'") from None
        serve(run_dir, cfg, log=typer.echo)
