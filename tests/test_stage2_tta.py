"""One rule for stage-2's mirroring (issue 27): pseudolabel.tta decides it, inference.tta is the
shipped predictor's; the other inference keys reach stage-2 unchanged."""
from __future__ import annotations

import pytest

from flareseg.config import Config, InferenceConfig, PseudoLabelConfig
from flareseg.pipeline.stage2_pseudo import stage2_inference, tta_note


@pytest.mark.parametrize("inference_tta", [False, True])
@pytest.mark.parametrize("pseudo_tta", [False, True])
def test_pseudolabel_tta_alone_decides_stage2_mirroring(inference_tta, pseudo_tta):
    cfg = Config(inference=InferenceConfig(tta=inference_tta, step_size=0.7, dtype="float32"),
                 pseudolabel=PseudoLabelConfig(tta=pseudo_tta))
    got = stage2_inference(cfg)
    assert got.tta is pseudo_tta
    assert (got.step_size, got.dtype, got.deterministic) == (0.7, "float32", True)
    note = tta_note(cfg)
    if inference_tta == pseudo_tta:
        assert note is None
    else:   # said, not silent
        assert "pseudolabel.tta" in note and "inference.tta" in note and "stage-6" in note
