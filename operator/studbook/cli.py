"""The ``studbook`` command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from studbook import __version__

app = typer.Typer(
    name="studbook",
    help="Breed, sign, verify and trace models as a governed population.",
    no_args_is_help=True,
)


@app.callback()
def _root() -> None:
    """Studbook: a Kubernetes operator for model breeding."""


@app.command()
def version() -> None:
    """Print Studbook's version."""
    typer.echo(__version__)


@app.command()
def operator(
    namespace: Annotated[
        list[str] | None,
        typer.Option(
            "--namespace", "-n", help="Watch these namespaces (repeatable); default: all."
        ),
    ] = None,
    metrics_port: Annotated[
        int, typer.Option(help="Serve Prometheus metrics on this port; 0: off.")
    ] = 9090,
    liveness: Annotated[
        str | None,
        typer.Option(help="Serve kopf's liveness probe at this URL (http://0.0.0.0:8080/healthz)."),
    ] = None,
    peering: Annotated[
        str | None, typer.Option(help="Peering name: replicas sharing it elect one to act.")
    ] = None,
    priority: Annotated[int, typer.Option(help="Peering priority; the highest acts.")] = 0,
) -> None:
    """Run the operator (the STUDBOOK_* environment configures it; see docs/operator.md)."""
    import kopf

    import studbook.controllers.handlers  # noqa: F401  (registers the handlers)
    from studbook import metrics

    if metrics_port:
        metrics.serve(metrics_port)
    kopf.run(
        clusterwide=not namespace,
        namespaces=namespace or (),
        liveness_endpoint=liveness,
        standalone=peering is None,
        peering_name=peering,
        priority=priority,
    )


@app.command("sign-task")
def sign_task(
    task: Annotated[Path, typer.Option(help="The sign task file a sign Job is given.")],
    signing_dir: Annotated[
        Path, typer.Option(help="The mounted signing Secret.", envvar="STUDBOOK_SIGNING_DIR")
    ] = Path("/etc/studbook/signing"),
) -> None:
    """Sign an artifact and its scorecard (what a sign Job runs)."""
    from studbook.api.task import SignTask
    from studbook.local.steps import run_sign, signer_from_dir

    spec = SignTask.model_validate_json(task.read_bytes())
    signer, identity = signer_from_dir(signing_dir)
    result = run_sign(spec, signer, identity)
    typer.echo(f"signed {spec.artifact_id} as {result.signer}")


def main() -> None:
    """Run the command line."""
    app()
