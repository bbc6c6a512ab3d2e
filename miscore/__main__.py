"""``python -m miscore`` runs the command line."""

from miscore.cli.main import main

main()
