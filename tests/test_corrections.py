"""Learning from corrections: what counts as known in a corrected segmentation."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet.core.train.corrections import CorrectionTracker


def _seg() -> np.ndarray:
    lab = np.zeros((60, 90), np.int32)
    lab[5:15, 5:15] = 1  # untouched
    lab[30:40, 30:40] = 2  # a false object: erased
    lab[10:20, 60:70] = 3  # too small: repainted larger
    return lab


def _edit(lab: np.ndarray, sel: np.ndarray, value: int) -> None:
    lab[sel] = value


def test_edited_objects_and_their_surroundings_are_known_the_rest_is_not():
    lab = _seg()
    tr = CorrectionTracker(lab, margin=3)
    assert not tr.corrected(lab) and not tr.mask(lab).any()
    _edit(lab, lab == 2, 0)  # erase the false object
    grow = np.zeros(lab.shape, bool)
    grow[8:22, 58:72] = True
    _edit(lab, grow, 3)  # repaint object 3 larger
    m = tr.mask(lab)
    assert m[30:40, 30:40].all()  # the erased object: known background now
    assert m[8:22, 58:72].all() and m[5, 60] and m[15, 55] and not m[0, 50]  # a 3-px ring
    assert not m[5:15, 5:15].any()  # the untouched prediction is not taken as truth
    assert tr.edited_ids(lab) == {(): {2, 3}} and tr.corrected(lab)


def test_an_undone_correction_is_no_correction_and_the_original_is_a_copy():
    seg = _seg()
    lab = seg.copy()
    tr = CorrectionTracker(lab, margin=3)
    _edit(lab, lab == 2, 0)
    assert tr.corrected(lab) and tr.mask(lab)[30:40, 30:40].all()
    lab[30:40, 30:40] = 2  # undo: the pixels are back as they were
    assert not tr.corrected(lab) and not tr.mask(lab).any() and tr.edited_ids(lab) == {}
    np.testing.assert_array_equal(tr.original, seg)  # edits of the layer never reach it


def test_a_split_knows_both_parts_and_checked_regions_and_trust_rest_add_the_rest():
    lab = _seg()
    tr = CorrectionTracker(lab, margin=0)
    half = np.zeros(lab.shape, bool)
    half[5:15, 10:15] = True
    _edit(lab, half & (lab == 1), 9)  # split object 1
    m = tr.mask(lab)
    assert m[5:15, 5:15].all() and m.sum() == 100  # both parts, no margin
    checked = np.zeros(lab.shape, bool)
    checked[40:, :] = True
    tr.check(checked)
    assert tr.mask(lab)[40:].all() and not tr.mask(lab)[20:30].any()
    assert CorrectionTracker(lab, trust_rest=True).mask(lab).all()


def test_stacks_keep_edits_in_their_plane_and_shapes_are_checked():
    lab = np.zeros((3, 40, 40), np.int32)
    lab[1, 5:15, 5:15] = 4
    lab[2, 5:15, 5:15] = 4  # the same id in another plane, not edited
    tr = CorrectionTracker(lab, margin=2)
    sel = np.zeros(lab.shape, bool)
    sel[1, 5:15, 5:15] = True
    _edit(lab, sel, 0)
    m = tr.mask(lab)
    assert m[1, 5:15, 5:15].all() and not m[2].any() and not m[0].any()
    with pytest.raises(ValueError, match="tracked shape"):
        tr.mask(np.zeros((40, 40), np.int32))
    with pytest.raises(ValueError, match="2D labels or stacks"):
        CorrectionTracker(np.zeros((4, 3, 40, 40), np.int32))
