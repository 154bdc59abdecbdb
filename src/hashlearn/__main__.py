"""``python -m hashlearn`` (also what ``torchrun -m hashlearn train ...`` runs on every rank)."""

import sys

from hashlearn.cli import main

if __name__ == "__main__":
    sys.exit(main())
