"""`python -m oa_exporter` is the `oa-exporter` command."""

import sys

from .entrypoints.cli import main

if __name__ == "__main__":
    sys.exit(main())
