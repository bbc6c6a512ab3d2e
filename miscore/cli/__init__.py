"""The ``miscore`` command line (typer). Entry point: ``miscore.cli.main:main``."""
