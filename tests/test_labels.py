import numpy as np
import pytest

from flareseg import labels as L


def test_registry_is_flare23():
    assert L.NUM_CLASSES == 15
    assert L.CLASS_NAMES[1] == "liver" and L.CLASS_NAMES[13] == "left_kidney" and L.CLASS_NAMES[14] == "tumor"
    assert L.ORGANS == tuple(range(1, 14)) and L.TUMOR == 14
    assert L.NAME_TO_INDEX["spleen"] == 3


def test_label_type_roundtrip_and_sorting():
    t = L.label_type([14, 2, 1, 0, 2])
    assert t == (1, 2, 14)
    assert L.type_to_str(t) == "1_2_14"
    assert L.str_to_type("1_2_14") == t
    assert L.str_to_type("14 2 1") == t
    assert L.type_to_str(()) == "none" and L.str_to_type("none") == ()


def test_label_type_rejects_bad_index():
    with pytest.raises(ValueError, match="17"):
        L.label_type([1, 17])
    with pytest.raises(ValueError, match="cannot parse"):
        L.str_to_type("1 x")


def test_pools_and_helpers():
    assert L.pool_of((14,)) == "tumor_only"
    assert L.pool_of((1, 14)) == "labeled"
    assert L.pool_of(()) == "unlabeled" and L.pool_of(None) == "unlabeled"
    assert L.unannotated((1, 14)) == tuple(range(2, 14))
    assert L.classes_present(np.array([[0, 3], [3, 14]])) == (3, 14)
    assert L.has_tumor((1, 14))
