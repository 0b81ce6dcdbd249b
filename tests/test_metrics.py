"""Scores against hand-computed answers and a brute-force reference; the evaluate CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from skimage.metrics import adapted_rand_error

from napari_unet.cli.main import main
from napari_unet.core.metrics import (
    evaluate,
    foreground_iou,
    instance_f1,
    instance_precision,
    instance_recall,
    match_instances,
    pixel_error,
    rand_error,
)


def squares() -> tuple[np.ndarray, np.ndarray]:
    """10x10. gt 1 = [0:4, 0:4] (16 px), pred 7 = [0:4, 1:5] (16 px): overlap 12, union 20, IoU 0.6.
    gt 2 = [6:8, 6:8] (4 px), pred 3 = [6:8, 7:9] (4 px): overlap 2, union 6, IoU 1/3."""
    gt = np.zeros((10, 10), np.uint16)
    pred = np.zeros((10, 10), np.int32)
    gt[0:4, 0:4] = 1
    gt[6:8, 6:8] = 2
    pred[0:4, 1:5] = 7
    pred[6:8, 7:9] = 3
    return pred, gt


# ---------------------------------------------------------------------------- exact answers
def test_squares_by_hand():
    pred, gt = squares()
    r = evaluate(pred, gt)
    assert r["foreground_iou"] == pytest.approx(14 / 26)
    assert (r["tp"], r["fp"], r["fn"], r["n_pred"], r["n_gt"]) == (1, 1, 1, 2, 2)
    assert r["precision"] == r["recall"] == r["f1"] == pytest.approx(0.5)
    assert r["pixel_error"] == pytest.approx(12 / 100)
    assert r["iou_threshold"] == 0.5
    # the single functions agree with evaluate
    assert foreground_iou(pred, gt) == r["foreground_iou"]
    assert pixel_error(pred, gt) == r["pixel_error"]
    assert rand_error(pred, gt) == r["rand_error"]
    assert instance_f1(pred, gt) == instance_precision(pred, gt) == instance_recall(pred, gt) == 0.5


def test_threshold_below_the_smaller_iou_matches_both():
    pred, gt = squares()
    m = match_instances(pred, gt, iou_threshold=0.3)
    assert (m.tp, m.fp, m.fn) == (2, 0, 0)
    assert m.f1 == 1.0
    m = match_instances(pred, gt, iou_threshold=0.6)  # IoU 0.6 is not > 0.6
    assert m.tp == 0 and m.f1 == 0.0


def test_unequal_counts_precision_recall():
    pred, gt = squares()
    pred[9, 0] = 5  # one extra false positive: 1 tp, 2 fp, 1 fn
    m = match_instances(pred, gt)
    assert (m.tp, m.fp, m.fn) == (1, 2, 1)
    assert m.precision == pytest.approx(1 / 3)
    assert m.recall == pytest.approx(1 / 2)
    assert m.f1 == pytest.approx(2 * 1 / (3 + 2))


def test_rand_error_by_hand():
    # gt objects of 2 px each, pred one segment of 4 px: same-object ordered pairs gt 2+2=4, pred 12, both 4.
    # Rand F = 4 / (0.5 * 4 + 0.5 * 12) = 0.5
    gt = np.array([[1, 1, 2, 2]])
    pred = np.array([[1, 1, 1, 1]])
    assert rand_error(pred, gt) == pytest.approx(0.5)
    assert rand_error(gt, gt) == 0.0
    # gt background is not scored: only the two pixels of gt object 1 count, and pred agrees on them
    assert rand_error(pred, np.array([[1, 1, 0, 0]])) == 0.0
    # pred background is one segment like any other label: it merges gt 1 and 2
    assert rand_error(np.zeros((1, 4), int), gt) == pytest.approx(0.5)


def test_rand_error_matches_skimage_in_2d():
    rng = np.random.default_rng(1)
    for _ in range(5):
        gt, pred = random_labels(rng, (20, 24)), random_labels(rng, (20, 24))
        assert rand_error(pred, gt) == pytest.approx(adapted_rand_error(gt, pred)[0], abs=1e-12)


def test_pixel_error_and_iou_on_semantic_maps():
    # 3-class maps: 0 background, 1 boundary, 2 interior
    gt = np.array([[0, 1, 2, 2], [0, 1, 2, 2]])
    pred = np.array([[0, 2, 2, 1], [0, 1, 2, 2]])
    # interior as foreground: gt 4 px, pred 4 px, 2 pixels differ, overlap 3, union 5
    assert pixel_error(pred, gt, foreground=2) == pytest.approx(2 / 8)
    assert foreground_iou(pred, gt, foreground=2) == pytest.approx(3 / 5)
    # boundary and interior together: the same pixels in both
    assert pixel_error(pred, gt, foreground=[1, 2]) == 0.0
    assert foreground_iou(pred, gt, foreground=(1, 2)) == 1.0
    # the default binarises at > 0: the same as [1, 2]
    assert pixel_error(pred, gt) == 0.0


# ---------------------------------------------------------------------------- one-to-one
def test_one_pred_over_two_gt_is_at_most_one_match():
    gt = np.zeros((4, 8), np.uint8)
    gt[:, 0:4], gt[:, 4:8] = 1, 2
    pred = np.zeros_like(gt)
    pred[:, 0:8] = 1  # IoU 0.5 with each gt object
    assert match_instances(pred, gt).tp == 0  # 0.5 is not > 0.5
    for t in (0.0, 0.3, 0.49):
        m = match_instances(pred, gt, iou_threshold=t)
        assert (m.tp, m.fp, m.fn) == (1, 0, 1)


def test_assignment_maximises_matches_not_greedy():
    # one row: gt X = [0, 6), Y = [6, 10); pred A = [1, 8), B = [0, 1)
    # IoU(A, X) = 5/8, IoU(A, Y) = 2/9, IoU(B, X) = 1/6. Greedy by IoU takes A-X and leaves B: 1 match.
    gt = np.array([[1] * 6 + [2] * 4])
    pred = np.array([[2] + [1] * 7 + [0] * 2])
    m = match_instances(pred, gt, iou_threshold=0.15)
    assert (m.tp, m.fp, m.fn) == (2, 0, 0)
    assert brute_matches(pred, gt, 0.15)[0] == 2
    assert match_instances(pred, gt, iou_threshold=0.2).tp == 1  # only A-X and A-Y remain


# ---------------------------------------------------------------------------- mask
def test_mask_ignores_objects_outside_it():
    pred, gt = squares()
    mask = np.zeros((10, 10), bool)
    mask[:, :5] = True  # the first pair lies inside, the second outside
    r = evaluate(pred, gt, mask)
    assert (r["tp"], r["fp"], r["fn"], r["n_pred"], r["n_gt"]) == (1, 0, 0, 1, 1)
    assert r["f1"] == 1.0
    assert r["foreground_iou"] == pytest.approx(12 / 20)
    assert r["pixel_error"] == pytest.approx(8 / 50)


def test_mask_counts_objects_by_their_pixels_inside():
    gt = np.zeros((6, 8), np.uint8)
    pred = np.zeros_like(gt)
    gt[0:4, 0:4] = 1
    pred[0:4, 2:6] = 1  # IoU 8 / 24 over the whole image
    assert match_instances(pred, gt).tp == 0
    mask = np.zeros(gt.shape, np.uint8)
    mask[:, 2:5] = 255  # inside: gt 8 px, pred 12 px, overlap 8 -> IoU 2/3
    m = match_instances(pred, gt, mask)
    assert (m.tp, m.fp, m.fn) == (1, 0, 0)
    assert foreground_iou(pred, gt, mask) == pytest.approx(8 / 12)


def test_mask_restricts_rand_error():
    gt = np.array([[1, 1, 2, 2]])
    pred = np.array([[1, 1, 1, 1]])
    assert rand_error(pred, gt) == pytest.approx(0.5)
    assert rand_error(pred, gt, mask=np.array([[1, 1, 0, 0]])) == 0.0


# ---------------------------------------------------------------------------- stacks
def test_stack_is_scored_plane_by_plane():
    pred, gt = squares()
    p2, g2 = np.stack([pred, gt.astype(pred.dtype)]), np.stack([gt, gt])
    r = evaluate(p2, g2)
    # plane 0 as in the 2D case, plane 1 perfect; counts summed, label 1 of gt counted in both planes
    assert (r["tp"], r["fp"], r["fn"], r["n_pred"], r["n_gt"]) == (3, 1, 1, 4, 4)
    assert r["foreground_iou"] == pytest.approx((14 + 20) / (26 + 20))
    assert r["pixel_error"] == pytest.approx(12 / 200)
    # the same label value in two planes is two objects; pairs of pixels across planes are never counted
    g = np.ones((2, 3, 3), int)
    p = np.stack([np.ones((3, 3), int), 2 * np.ones((3, 3), int)])
    assert rand_error(p, g) == 0.0
    assert match_instances(p, g).tp == 2


def test_4d_input_is_a_stack_of_planes():
    rng = np.random.default_rng(2)
    gt = random_labels(rng, (2, 3, 12, 12))
    pred = random_labels(rng, (2, 3, 12, 12))
    r4 = evaluate(pred, gt)
    r3 = evaluate(pred.reshape(6, 12, 12), gt.reshape(6, 12, 12))
    assert r4 == r3


# ---------------------------------------------------------------------------- brute-force reference
def random_labels(rng: np.random.Generator, shape: tuple[int, ...], n: int = 6) -> np.ndarray:
    """Random overlapping rectangles painted on each plane: labels 1..n, some hidden, some background."""
    out = np.zeros(shape, np.int64)
    planes = out.reshape(-1, *shape[-2:])
    h, w = shape[-2:]
    for plane in planes:
        for label in rng.permutation(np.arange(1, n + 1)):
            y, x = rng.integers(0, h - 1), rng.integers(0, w - 1)
            dy, dx = rng.integers(1, h // 2 + 1), rng.integers(1, w // 2 + 1)
            plane[y : y + dy, x : x + dx] = label
    return out


def _kuhn(adj: dict[int, list[int]]) -> int:
    """Maximum bipartite matching by augmenting paths."""
    owner: dict[int, int] = {}

    def augment(u: int, seen: set[int]) -> bool:
        for v in adj[u]:
            if v not in seen:
                seen.add(v)
                if v not in owner or augment(owner[v], seen):
                    owner[v] = u
                    return True
        return False

    return sum(augment(u, set()) for u in adj)


def brute_matches(pred, gt, threshold, mask=None) -> tuple[int, int, int]:
    """(tp, n_pred, n_gt): IoU of every pair of objects by boolean masks, plane by plane."""
    pred, gt = np.asarray(pred), np.asarray(gt)
    mask = np.ones(pred.shape, bool) if mask is None else np.asarray(mask) != 0
    p3 = pred.reshape(-1, *pred.shape[-2:])
    g3 = gt.reshape(-1, *gt.shape[-2:])
    m3 = mask.reshape(-1, *mask.shape[-2:])
    tp = n_pred = n_gt = 0
    for p, g, m in zip(p3, g3, m3, strict=True):
        p_labels = [v for v in np.unique(p[m]) if v != 0]
        g_labels = [v for v in np.unique(g[m]) if v != 0]
        adj = {}
        for a in p_labels:
            adj[a] = []
            for b in g_labels:
                pa, gb = (p == a) & m, (g == b) & m
                iou = (pa & gb).sum() / (pa | gb).sum()
                if iou > threshold:
                    adj[a].append(b)
        tp += _kuhn(adj)
        n_pred += len(p_labels)
        n_gt += len(g_labels)
    return tp, n_pred, n_gt


def brute_rand_error(pred, gt, mask=None) -> float:
    """1 - Rand F-score over ordered pairs of distinct scored pixels (gt > 0, inside the mask) of a plane."""
    pred, gt = np.asarray(pred), np.asarray(gt)
    mask = np.ones(pred.shape, bool) if mask is None else np.asarray(mask) != 0
    both = same_p = same_g = 0
    for p, g, m in zip(
        pred.reshape(-1, *pred.shape[-2:]),
        gt.reshape(-1, *gt.shape[-2:]),
        mask.reshape(-1, *mask.shape[-2:]),
        strict=True,
    ):
        keep = m & (g > 0)
        p, g = p[keep], g[keep]
        off_diagonal = ~np.eye(p.size, dtype=bool)
        sp = (p[:, None] == p[None, :]) & off_diagonal
        sg = (g[:, None] == g[None, :]) & off_diagonal
        both += (sp & sg).sum()
        same_p += sp.sum()
        same_g += sg.sum()
    return 0.0 if same_p + same_g == 0 else 1 - 2 * both / (same_p + same_g)


@pytest.mark.parametrize("shape", [(16, 16), (3, 12, 14)])
@pytest.mark.parametrize("threshold", [0.0, 0.1, 0.3, 0.5, 0.7])
def test_agrees_with_brute_force(shape, threshold):
    rng = np.random.default_rng(hash((shape, threshold)) % 2**32)
    for _ in range(8):
        gt = random_labels(rng, shape)
        pred = random_labels(rng, shape, n=int(rng.integers(1, 8)))
        mask = rng.random(shape) < 0.7 if rng.random() < 0.5 else None
        r = evaluate(pred, gt, mask, iou_threshold=threshold)
        assert (r["tp"], r["n_pred"], r["n_gt"]) == brute_matches(pred, gt, threshold, mask)
        m = np.ones(shape, bool) if mask is None else mask
        pb, gb = (pred > 0) & m, (gt > 0) & m
        assert r["foreground_iou"] == pytest.approx((pb & gb).sum() / (pb | gb).sum())
        assert r["pixel_error"] == pytest.approx((pb != gb).sum() / m.sum())
        assert r["rand_error"] == pytest.approx(brute_rand_error(pred, gt, mask), abs=1e-12)


def test_large_label_values_use_the_sorting_path():
    rng = np.random.default_rng(3)
    gt = random_labels(rng, (16, 16))
    pred = random_labels(rng, (16, 16))
    big_gt = np.where(gt > 0, gt.astype(np.uint64) + 2**40, 0).astype(np.uint64)
    big_pred = np.where(pred > 0, pred * 10**9, 0)
    assert evaluate(big_pred, big_gt) == evaluate(pred, gt)


# ---------------------------------------------------------------------------- identity, empties, inputs
def test_identity_is_perfect():
    rng = np.random.default_rng(4)
    gt = random_labels(rng, (2, 20, 20))
    r = evaluate(gt, gt.copy())
    assert r["foreground_iou"] == r["precision"] == r["recall"] == r["f1"] == 1.0
    assert r["pixel_error"] == r["rand_error"] == 0.0
    assert r["fp"] == r["fn"] == 0 and r["tp"] == r["n_gt"] > 0
    # relabelling pred does not change any score
    perm = np.concatenate([[0], rng.permutation(np.arange(1, 7)) + 100])
    assert evaluate(perm[gt], gt) == r


def test_empty_images_are_perfect_and_misses_are_scored():
    empty = np.zeros((8, 8), np.uint8)
    r = evaluate(empty, empty)
    assert r["foreground_iou"] == r["precision"] == r["recall"] == r["f1"] == 1.0
    assert r["pixel_error"] == r["rand_error"] == 0.0
    full = np.ones((8, 8), np.uint8)
    r = evaluate(empty, full)  # everything missed
    assert r["foreground_iou"] == r["precision"] == r["recall"] == r["f1"] == 0.0
    assert (r["tp"], r["fp"], r["fn"]) == (0, 0, 1)
    assert r["pixel_error"] == 1.0
    r = evaluate(full, empty)  # everything hallucinated
    assert (r["tp"], r["fp"], r["fn"]) == (0, 1, 0)
    assert r["precision"] == r["f1"] == 0.0


def test_bool_and_integral_float_inputs():
    pred, gt = squares()
    expected = evaluate(pred, gt)
    assert evaluate(pred.astype(np.float32), gt.astype(np.float64)) == expected
    assert foreground_iou(pred > 0, gt > 0) == expected["foreground_iou"]


def test_inputs_are_not_modified():
    rng = np.random.default_rng(5)
    pred = random_labels(rng, (2, 16, 16)).astype(np.float64)
    gt = random_labels(rng, (2, 16, 16)).astype(np.int32)
    mask = (rng.random((2, 16, 16)) < 0.6).astype(np.uint8)
    copies = pred.copy(), gt.copy(), mask.copy()
    for fn in (evaluate, foreground_iou, pixel_error, rand_error, match_instances, instance_f1):
        fn(pred, gt, mask)
    for after, before in zip((pred, gt, mask), copies, strict=True):
        assert after.dtype == before.dtype
        np.testing.assert_array_equal(after, before)


@pytest.mark.parametrize(
    ("pred", "gt", "mask", "message"),
    [
        (np.zeros((4, 4), int), np.zeros((4, 5), int), None, "same shape"),
        (np.full((4, 4), 0.5), np.zeros((4, 4), int), None, "non-integer"),
        (np.full((4, 4), np.nan), np.zeros((4, 4), int), None, "non-integer"),
        (
            np.zeros((4, 4), int),
            np.zeros((4, 4), int),
            np.ones((4, 5), bool),
            "mask must have the shape",
        ),
        (np.zeros((4, 4), int), np.zeros((4, 4), int), np.zeros((4, 4), bool), "selects no pixel"),
        (np.zeros((4, 4), int), -np.ones((4, 4), int), None, "negative"),
        (np.zeros(4, int), np.zeros(4, int), None, "2D image"),
        (np.zeros((0, 4), int), np.zeros((0, 4), int), None, "empty"),
        (np.zeros((4, 4), complex), np.zeros((4, 4), int), None, "integers"),
    ],
)
def test_invalid_inputs_are_named(pred, gt, mask, message):
    with pytest.raises(ValueError, match=message):
        evaluate(pred, gt, mask)


def test_invalid_threshold_and_foreground():
    pred, gt = squares()
    for t in (-0.1, 1.0, 2):
        with pytest.raises(ValueError, match="iou_threshold"):
            match_instances(pred, gt, iou_threshold=t)
    with pytest.raises(ValueError, match="foreground"):
        pixel_error(pred, gt, foreground=0.5)
    with pytest.raises(ValueError, match="foreground"):
        foreground_iou(pred, gt, foreground=[])


# ---------------------------------------------------------------------------- CLI
def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["evaluate", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_tiff_with_mask(tmp_path, capsys):
    pred, gt = squares()
    mask = np.zeros((10, 10), np.uint8)
    mask[:, :5] = 1
    for name, arr in (("pred", pred), ("gt", gt), ("mask", mask)):
        tifffile.imwrite(tmp_path / f"{name}.tif", arr)
    code, out, _ = run_cli(capsys, str(tmp_path / "pred.tif"), str(tmp_path / "gt.tif"))
    assert code == 0
    assert json.loads(out) == pytest.approx(evaluate(pred, gt))
    assert json.loads(out)["f1"] == 0.5
    code, out, _ = run_cli(
        capsys,
        str(tmp_path / "pred.tif"),
        str(tmp_path / "gt.tif"),
        "--mask",
        str(tmp_path / "mask.tif"),
    )
    assert code == 0
    r = json.loads(out)
    assert (r["tp"], r["fp"], r["fn"], r["f1"]) == (1, 0, 0, 1.0)
    code, out, _ = run_cli(
        capsys, str(tmp_path / "pred.tif"), str(tmp_path / "gt.tif"), "--iou-threshold", "0.3"
    )
    assert code == 0 and json.loads(out)["tp"] == 2 and json.loads(out)["iou_threshold"] == 0.3


def test_cli_zarr(tmp_path, capsys):
    zarr = pytest.importorskip("zarr")
    pred, gt = squares()
    tifffile.imwrite(tmp_path / "gt.tif", gt)
    zarr.save_array(str(tmp_path / "pred.zarr"), pred)
    group = zarr.open_group(str(tmp_path / "group.zarr"), mode="w")
    group.create_array("labels", shape=pred.shape, dtype=pred.dtype)[...] = pred
    for path in ("pred.zarr", "group.zarr", "group.zarr/labels"):
        code, out, err = run_cli(capsys, str(tmp_path / path), str(tmp_path / "gt.tif"))
        assert code == 0, err
        assert json.loads(out) == pytest.approx(evaluate(pred, gt))
    group.create_array("other", shape=pred.shape, dtype=pred.dtype)
    code, out, err = run_cli(capsys, str(tmp_path / "group.zarr"), str(tmp_path / "gt.tif"))
    assert code == 2 and out == ""
    assert "2 arrays" in err


def test_cli_errors(tmp_path, capsys):
    pred, gt = squares()
    tifffile.imwrite(tmp_path / "pred.tif", pred)
    tifffile.imwrite(tmp_path / "small.tif", gt[:5])
    (tmp_path / "junk.tif").write_bytes(b"not a tiff at all")
    cases = [
        ((str(tmp_path / "missing.tif"), str(tmp_path / "pred.tif")), "PRED not found"),
        ((str(tmp_path / "pred.tif"), str(tmp_path / "junk.tif")), "could not read GT"),
        ((str(tmp_path / "pred.tif"), str(tmp_path / "small.tif")), "same shape"),
        (
            (
                str(tmp_path / "pred.tif"),
                str(tmp_path / "pred.tif"),
                "--mask",
                str(tmp_path / "x.tif"),
            ),
            "mask not found",
        ),
        (
            (str(tmp_path / "pred.tif"), str(tmp_path / "pred.tif"), "--iou-threshold", "1.5"),
            "iou_threshold",
        ),
    ]
    for argv, message in cases:
        code, out, err = run_cli(capsys, *argv)
        assert code == 2 and out == ""
        assert message in err and err.startswith("napari-unet evaluate: error:")
