#!/usr/bin/env python
"""stage-3 (cto): build the context-aware tumor-object (CTO) pool: tumors with their organ context
cut from the cleaned training labels at the coarse spacing, plus a QC gallery."""
# Docstring = the stage's description in flareseg/pipeline/registry.py (tests/test_pipeline_scripts.py
# checks they match). Same as `python -m flareseg.pipeline 3 ...`; see `--help`.
import sys

from flareseg.pipeline.__main__ import main

if __name__ == "__main__":
    sys.exit(main(["3"] + sys.argv[1:]))
