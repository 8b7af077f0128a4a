"""``python -m widedeep``: the same command line as ``widedeep``."""

from widedeep.cli import main

main()
