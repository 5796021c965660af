"""``python -m omnibyte.cli`` (and ``torchrun -m omnibyte.cli``) run the command line."""
import sys

from omnibyte.cli import main

sys.exit(main())
