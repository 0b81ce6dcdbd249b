"""segment(): prediction + post-processing, plane by plane; instances with touching objects separated."""

import numpy as np
import pytest
from helpers import tiny_model

from napari_unet.core.modelfile.files import Postprocessing
from napari_unet.core.postprocess.instances import (
    instances,
    instances_from_semantic,
    semantic_labels,
)
from napari_unet.core.predict.predict2d import predict_image
from napari_unet.core.segment import segment, segment_image


def _model(classes=2, post=None):
    """A tiny model keeping objects of any size unless ``post`` says otherwise."""
    return tiny_model(classes=classes, eval_mode=True, postprocessing=post or Postprocessing(min_size=1))


def test_semantic_is_argmax_of_probabilities():
    m = _model(classes=3, post=Postprocessing((2,), (1,), 1))
    img = np.random.default_rng(0).normal(size=(60, 50)).astype(np.float32)
    probs = segment_image(img, m, output="probabilities", tile_size=44, device="cpu")
    sem = segment_image(img, m, output="semantic", tile_size=44, device="cpu")
    assert probs.shape == (3, 60, 50) and sem.shape == (60, 50) and sem.dtype == np.uint8
    assert np.array_equal(sem, probs.argmax(0))
    np.testing.assert_allclose(probs.sum(0), 1, atol=1e-5)


def test_instances_equal_postprocessed_probabilities_for_a_stack():
    m = _model()
    stack = np.random.default_rng(1).normal(size=(2, 50, 60)).astype(np.float32)
    lab = segment_image(stack, m, output="instances", tile_size=44, device="cpu")
    probs = predict_image(stack, m, tile_size=44, device="cpu")
    assert lab.shape == (2, 50, 60) and lab.dtype == np.uint16
    assert np.array_equal(lab, instances(probs, m.postprocessing))


def test_progress_spans_all_planes_and_cancel():
    m = _model()
    stack = np.zeros((3, 60, 60), np.float32)
    events = list(segment(stack, m, output="semantic", tile_size=44, device="cpu"))
    assert [e.done for e in events] == list(range(1, len(events) + 1))
    assert events[-1].done == events[-1].total and events[-1].planes == 3
    assert {e.plane for e in events} == {0, 1, 2}
    gen = segment(stack, m, tile_size=44, device="cpu")
    next(gen)
    gen.close()


def test_touching_objects_separated_by_background_line():
    sem = np.zeros((20, 30), np.uint8)
    sem[5:15, 3:14] = 1
    sem[5:15, 15:27] = 1  # a one-pixel background line at x = 14 separates the two objects
    lab = instances_from_semantic(sem, Postprocessing(min_size=1))
    assert lab.max() == 2
    assert len(np.unique(lab[5:15, 3:14])) == 1 and len(np.unique(lab[5:15, 15:27])) == 1
    assert lab[10, 5] != lab[10, 20]


def test_interior_grown_into_boundary_class():
    sem = np.zeros((20, 20), np.uint8)
    sem[4:16, 4:16] = 1  # boundary
    sem[6:14, 6:14] = 2  # interior
    lab = instances_from_semantic(sem, Postprocessing((2,), (1,), 1))
    assert lab.max() == 1
    assert np.array_equal(lab > 0, sem > 0)


def test_watershed_splits_touching_discs():
    yy, xx = np.mgrid[:40, :60]
    fg = ((yy - 20) ** 2 + (xx - 18) ** 2 < 100) | ((yy - 20) ** 2 + (xx - 36) ** 2 < 100)
    sem = fg.astype(np.uint8)
    assert instances_from_semantic(sem, Postprocessing(min_size=1)).max() == 1
    assert instances_from_semantic(sem, Postprocessing(min_size=1, split="watershed")).max() == 2


def test_min_size_and_relabelling():
    sem = np.zeros((10, 10), np.uint8)
    sem[0, 0] = 1
    sem[5:9, 5:9] = 1
    lab = instances_from_semantic(sem, Postprocessing(min_size=4))
    assert lab[0, 0] == 0 and set(np.unique(lab)) == {0, 1}


def test_errors():
    m = _model()
    with pytest.raises(ValueError, match="output"):
        segment_image(np.zeros((10, 10)), m, output="edges")
    with pytest.raises(ValueError, match="probabilities must have shape"):
        semantic_labels(np.zeros((10, 10)))
    with pytest.raises(ValueError, match="2D"):  # a plane or, from a 3D U-Net, a volume
        instances_from_semantic(np.zeros((2, 2, 10, 10), np.uint8))


def _packed_probabilities():
    """Two packed squares with no background between them: interior probability high in their
    middles, low on the shared border column (x = 15) and at the outer edge; a third, weak blob
    whose interior is never confident."""
    p = np.zeros((3, 30, 40), np.float32)
    p[0] = 1.0
    fg = np.zeros((30, 40), bool)
    fg[5:25, 5:26] = True
    p[0][fg] = 0.05
    interior = np.zeros((30, 40), np.float32)
    interior[7:23, 7:14] = 0.9
    interior[7:23, 17:24] = 0.9
    interior[fg & (interior == 0)] = 0.2
    p[2] = interior
    p[1] = np.where(fg, 0.95 - interior, 0.0)
    p[0][25:29, 30:38], p[1][25:29, 30:38], p[2][25:29, 30:38] = 0.3, 0.4, 0.3  # weak blob
    return p


def test_seeded_watershed_separates_packed_objects():
    from napari_unet.core.postprocess.instances import seeded_instances

    p = _packed_probabilities()
    post = Postprocessing((2,), (1,), min_size=1, split="seeded", min_seed_size=4)
    lab = instances_from_semantic(p.argmax(0).astype(np.uint8), post, probabilities=p)
    left, right = lab[15, 9], lab[15, 21]
    assert left > 0 and right > 0 and left != right  # packed, yet two objects
    assert lab[5:25, 5:15].max() == left and np.all(lab[5:25, 5:15] == left)  # the border splits them
    assert np.all(lab[5:25, 16:26] == right)
    assert lab[27, 34] > 0 and lab[27, 34] not in (left, right)  # a region with no seed is kept
    assert lab.max() == 3 and lab[0, 0] == 0
    # argmax components grown into the boundary merge nothing here either way, but with one seed
    # too small the watershed floods the whole square from the other seed
    big = Postprocessing((2,), (1,), min_size=1, split="seeded", min_seed_size=10**4)
    raw = seeded_instances(p, big)
    assert len(np.unique(raw[5:25, 5:26])) == 1  # no seed large enough: the square is one object
    with pytest.raises(ValueError, match="probabilities"):
        instances_from_semantic(p.argmax(0).astype(np.uint8), post)


def test_segment_uses_the_models_seeded_postprocessing():
    post = Postprocessing((2,), (1,), min_size=3, split="seeded", min_seed_size=5)
    m = _model(classes=3, post=post)
    img = np.random.default_rng(2).normal(size=(64, 72)).astype(np.float32)
    probs = segment_image(img, m, output="probabilities", tile_size=44, device="cpu")
    lab = segment_image(img, m, output="instances", tile_size=44, device="cpu")
    np.testing.assert_array_equal(lab, instances(probs, post))
    # the file keeps the choice
    import tempfile
    from pathlib import Path

    from napari_unet.core.exchange.opening import load_model
    from napari_unet.core.modelfile.files import save_model

    path = save_model(m, Path(tempfile.mkdtemp()) / "m")
    assert load_model(path).postprocessing == post
