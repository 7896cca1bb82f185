"""Command groups of the ``uait`` command line, each a Typer app added in ``infra.cli``."""
