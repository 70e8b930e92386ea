"""``python -m swarmhub`` is the ``swarmhub`` command."""

from swarmhub.cli import main

main()
