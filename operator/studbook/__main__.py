"""``python -m studbook`` runs the command-line interface."""

from studbook.cli import main

main()
