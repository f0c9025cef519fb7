#!/usr/bin/env python
"""stage-2 (pseudolabels): pseudo-label the unlabeled scans with the fine model, rank them by organ
and tumor uncertainty, select the most certain ones, and fill organs into the tumor-only cases."""
# Docstring = the stage's description in flareseg/pipeline/registry.py (tests/test_pipeline_scripts.py
# checks they match). Same as `python -m flareseg.pipeline 2 ...`; see `--help`.
import sys

from flareseg.pipeline.__main__ import main

if __name__ == "__main__":
    sys.exit(main(["2"] + sys.argv[1:]))
