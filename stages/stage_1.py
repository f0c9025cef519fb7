#!/usr/bin/env python
"""stage-1 (fine): import and validate the labeled data (or generate phantoms), plan and preprocess
the fine and coarse spacings with nnU-Net, and train the fine model with the merge-max loss and
label-type batches."""
# Docstring = the stage's description in flareseg/pipeline/registry.py (tests/test_pipeline_scripts.py
# checks they match). Same as `python -m flareseg.pipeline 1 ...`; see `--help`.
import sys

from flareseg.pipeline.__main__ import main

if __name__ == "__main__":
    sys.exit(main(["1"] + sys.argv[1:]))
