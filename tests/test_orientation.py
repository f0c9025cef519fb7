"""Axial reorientation: the permutation for every axis order, flips, obliquity, and a real KiTS mask."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import SimpleITK as sitk

from flareseg.inference.orientation import axial_reorientation


def index_order(perm) -> list[int]:
    """Array-axis permutation -> the index-axis order ``sitk.PermuteAxes`` takes for the same move."""
    return [2 - perm[2 - i] for i in range(3)]


def stored_permuted(img: sitk.Image, perm) -> sitk.Image:
    """The same physical volume stored with array axes ``perm`` (``array.transpose(perm)``)."""
    return sitk.PermuteAxes(img, index_order(perm))


def axial_image(shape=(4, 5, 6), flips=(1, 1, 1)) -> sitk.Image:
    img = sitk.GetImageFromArray(np.arange(np.prod(shape), dtype=np.int16).reshape(shape))
    img.SetSpacing((0.7, 1.1, 2.5))
    img.SetOrigin((3.0, -4.0, 5.0))
    img.SetDirection(tuple(np.diag(flips).astype(float).ravel()))
    return img


def test_axial_directions_are_the_identity():
    for flips in itertools.product((1, -1), repeat=3):
        ro = axial_reorientation(np.diag(flips).ravel())
        assert ro.perm == ro.inverse == (0, 1, 2) and ro.is_identity


@pytest.mark.parametrize("perm", list(itertools.permutations(range(3))))
def test_every_stored_axis_order_is_brought_back(perm):
    rng = np.random.default_rng(sum(p * 3 ** i for i, p in enumerate(perm)))
    flips = tuple(int(f) for f in rng.choice([-1, 1], 3))
    axial = axial_image(flips=flips)
    stored = stored_permuted(axial, perm)
    ro = axial_reorientation(stored.GetDirection())
    arr = sitk.GetArrayFromImage(stored)
    assert np.array_equal(arr.transpose(ro.perm), sitk.GetArrayFromImage(axial))
    assert np.array_equal(arr.transpose(ro.perm).transpose(ro.inverse), arr)
    spacing = tuple(reversed(stored.GetSpacing()))
    assert [spacing[a] for a in ro.perm] == list(reversed(axial.GetSpacing()))
    # the reoriented index axes point along x, y, z (flips kept as stored)
    back = sitk.PermuteAxes(stored, index_order(ro.perm))
    assert np.allclose(np.array(back.GetDirection()).reshape(3, 3), np.diag(flips))
    assert ro.is_identity == (perm == (0, 1, 2))


def rotation(axis: int, degrees: float) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    i, j = [a for a in range(3) if a != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def test_oblique_matrix_maps_to_the_nearest_axes():
    # KiTS-like storage (index axis 0 along -z, 2 along x), tilted 20 degrees about y and 10 about z
    d = rotation(1, 20) @ rotation(2, 10) @ np.array([[0, 0, 1], [0, 1, 0], [-1, 0, 0]], float)
    assert axial_reorientation(d.ravel()).perm == (2, 1, 0)
    assert axial_reorientation((rotation(0, 30) @ rotation(2, -25)).ravel()).is_identity


def test_ties_are_deterministic():
    """At exactly 45 degrees in-plane the stored order is kept."""
    assert axial_reorientation(rotation(2, 45).ravel()).is_identity
    assert axial_reorientation(rotation(2, 46).ravel()).perm == (0, 2, 1)


def test_non_finite_direction_is_rejected():
    with pytest.raises(ValueError):
        axial_reorientation([np.nan] * 9)


def test_real_kits_mask_becomes_axial(shared_data):
    """KiTS19 stores (slices, H, W): after the permutation, the two kidneys lie side by side along
    array axis 2 (patient L-R) and overlap along axis 0 (S-I), as in any axial CT."""
    img = sitk.ReadImage(str(shared_data / "labels" / "kits19_case_00002_segmentation.nii.gz"))
    ro = axial_reorientation(img.GetDirection())
    assert ro.perm == (2, 1, 0)
    arr = sitk.GetArrayViewFromImage(img).transpose(ro.perm)
    spacing = [tuple(reversed(img.GetSpacing()))[a] for a in ro.perm]
    assert spacing[0] == 1.0 and spacing[1] == spacing[2]  # KiTS19 case 2: 1 mm slices, square pixels
    kidney = arr[::2, ::4, ::4] > 0
    extent_x = np.flatnonzero(kidney.any((0, 1)))
    gaps = np.diff(extent_x)
    assert gaps.max() > 10, "two kidneys separated along L-R"
    left, right = kidney[..., :extent_x[gaps.argmax()] + 1], kidney[..., extent_x[gaps.argmax()] + 1:]
    z_left, z_right = (np.flatnonzero(k.any((1, 2))) for k in (left, right))
    assert z_left[0] < z_right[-1] and z_right[0] < z_left[-1], "kidneys overlap along S-I"


@pytest.mark.parametrize("perm", list(itertools.permutations(range(3))))
def test_canonical_is_dicomorient_lps_for_every_axis_order_and_flip(perm):
    """``canonical=True`` (what import writes and predict feeds the network) is SimpleITK's
    ``DICOMOrient(image, "LPS")`` on the array, for every axis order and flip; ``undo`` restores it."""
    from flareseg.inference.orientation import canonical_image
    rng = np.random.default_rng(7)
    for flips in itertools.product((1, -1), repeat=3):
        img = sitk.GetImageFromArray(rng.integers(-1000, 1000, (4, 5, 6)).astype(np.int16))
        img.SetSpacing((0.7, 1.1, 2.5))
        img.SetOrigin((3.0, -4.0, 5.0))
        d = np.zeros((3, 3))
        for i, p in enumerate(perm):
            d[p, i] = flips[i]
        img.SetDirection(tuple(d.ravel()))
        ro = axial_reorientation(img.GetDirection(), canonical=True)
        ref = sitk.DICOMOrient(img, "LPS")
        arr = sitk.GetArrayFromImage(img)
        assert np.array_equal(ro.apply(arr), sitk.GetArrayFromImage(ref))
        assert np.array_equal(ro.undo(ro.apply(arr)), arr)
        assert np.array_equal(ro.undo(ro.apply(arr[None], lead=1), lead=1)[0], arr)
        out = canonical_image(img)
        assert np.allclose(out.GetDirection(), np.eye(3).ravel())
        assert np.allclose(out.GetOrigin(), ref.GetOrigin()) and np.allclose(out.GetSpacing(), ref.GetSpacing())
        assert ro.is_identity == (perm == (0, 1, 2) and flips == (1, 1, 1))
        assert (out is img) == ro.is_identity
