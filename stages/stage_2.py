#!/usr/bin/env python
"""stage-2: thin entry point; the work is in flareseg.pipeline (see `--help`)."""
import sys

from flareseg.pipeline.__main__ import main

if __name__ == "__main__":
    sys.exit(main(["2"] + sys.argv[1:]))
