#!/usr/bin/env python
"""stage-6 (ship): ship the coarse model: predict the validation set the way the FLARE harness runs
a submission, evaluate DSC/NSD and write the efficiency report."""
# Docstring = the stage's description in flareseg/pipeline/registry.py (tests/test_pipeline_scripts.py
# checks they match). Same as `python -m flareseg.pipeline 6 ...`; see `--help`.
import sys

from flareseg.pipeline.__main__ import main

if __name__ == "__main__":
    sys.exit(main(["6"] + sys.argv[1:]))
