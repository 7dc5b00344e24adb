"""``python -m workflows.plots``: draw the grid's figures (``workflows.plots.render``; ``--help`` for the options)."""
import sys

from workflows.plots.render import main

if __name__ == "__main__":
    sys.exit(main())
