#!/usr/bin/env python
"""stage-4 (cleaning): clean every label the coarse model will train on (small regions, tumors
outside the abdomen or far from organs) and write the coarse training set."""
# Docstring = the stage's description in flareseg/pipeline/registry.py (tests/test_pipeline_scripts.py
# checks they match). Same as `python -m flareseg.pipeline 4 ...`; see `--help`.
import sys

from flareseg.pipeline.__main__ import main

if __name__ == "__main__":
    sys.exit(main(["4"] + sys.argv[1:]))
