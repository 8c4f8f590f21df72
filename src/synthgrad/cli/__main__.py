"""``python -m synthgrad.cli``: the console script without installing it."""
import sys

from synthgrad.cli.main import main

sys.exit(main())
