#!/usr/bin/env python
"""stage-5 (coarse): train the coarse model on ground truth and the selected, cleaned pseudo labels
with online context-aware CutMix from the stage-3 pool."""
# Docstring = the stage's description in flareseg/pipeline/registry.py (tests/test_pipeline_scripts.py
# checks they match). Same as `python -m flareseg.pipeline 5 ...`; see `--help`.
import sys

from flareseg.pipeline.__main__ import main

if __name__ == "__main__":
    sys.exit(main(["5"] + sys.argv[1:]))
