#!/usr/bin/env python
"""stage-4: thin entry point; the work is in flareseg.pipeline (see `--help`)."""
import sys

from flareseg.pipeline.__main__ import main

if __name__ == "__main__":
    sys.exit(main(["4"] + sys.argv[1:]))
