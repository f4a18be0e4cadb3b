"""The ``studbook`` command line."""

import typer

from studbook import __version__

app = typer.Typer(
    name="studbook",
    help="Breed, sign, verify and trace models as a governed population.",
    no_args_is_help=True,
)


@app.command()
def version() -> None:
    """Print Studbook's version."""
    typer.echo(__version__)


def main() -> None:
    """Run the command line."""
    app()
