"""Batch segmentation: many arrays, files/globs/folders with resume, zarr block by block."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
from helpers import drain, instances_model, is_relabelling, tiny_model

from napari_unet import batch
from napari_unet.batch import (
    ArrayDone,
    OutputBusyError,
    expand_inputs,
    instances_to_zarr,
    output_lock,
    segment_arrays,
    segment_files,
    segment_to_zarr,
)
from napari_unet.cli.main import main
from napari_unet.core.events import ItemDone, TileDone
from napari_unet.core.modelfile.files import Postprocessing, save_model
from napari_unet.core.postprocess.instances import instances_from_semantic
from napari_unet.core.segment import segment_image

DATA = Path(__file__).parent / "data"
TILE = 96


@pytest.fixture(scope="module")
def hela() -> np.ndarray:
    """Frames 0-1, rows 100-228, columns 200-360 of the HeLa stack (tests/data/README.md)."""
    return tifffile.imread(DATA / "hela-stack" / "t0-1_y100-228_x200-360_image.tif")


@pytest.fixture(scope="module")
def nuclei(nuclei_image) -> np.ndarray:
    return nuclei_image[:128, :150]


@pytest.fixture
def model_file(tmp_path) -> Path:
    return save_model(instances_model(), tmp_path / "models" / "tiny")


def test_is_relabelling_detects_differences():
    a = np.array([[1, 1, 0, 2], [0, 3, 3, 2]])
    assert is_relabelling(a, a * 7)
    assert not is_relabelling(a, np.where(a == 3, 2, a))  # two objects merged
    assert not is_relabelling(a, np.where(a == 3, 0, a))  # an object lost


# ---------------------------------------------------------------------------- inputs
def test_expand_inputs_files_globs_folders(tmp_path, nuclei):
    (tmp_path / "d").mkdir()
    for name in ("b.tif", "a.tiff", "notes.txt", ".a.tif.123.tmp"):
        (tmp_path / "d" / name).write_bytes(b"x")
    tifffile.imwrite(tmp_path / "c.tif", nuclei)
    import zarr

    zarr.open_array(store=str(tmp_path / "d" / "z.zarr"), mode="w", shape=(4, 4), dtype="u1")
    files, problems = expand_inputs([tmp_path / "d", str(tmp_path / "*.tif"), tmp_path / "c.tif",
                                     str(tmp_path / "missing.tif"), str(tmp_path / "none*.tif")])
    names = [f.name for f in files]
    assert names == ["a.tiff", "b.tif", "z.zarr", "c.tif"]  # folder sorted, zarr is one image, no dups
    assert [p for p, _ in problems] == [str(tmp_path / "missing.tif"), str(tmp_path / "none*.tif")]


# ---------------------------------------------------------------------------- in-memory arrays
def test_segment_arrays_one_job_named_results(nuclei, hela):
    model = instances_model()
    images = {"nuclei": nuclei, "hela": hela, "broken": np.zeros(7)}
    events, results = drain(segment_arrays(images, model, output_type="semantic", tile_size=TILE,
                                           device="cpu"), keep_events=True)
    tiles = [e for e in events if isinstance(e, TileDone)]
    dones = [e for e in events if isinstance(e, ArrayDone)]
    assert len({e.total for e in tiles}) == 1  # one progress total for the whole job
    assert [e.done for e in tiles] == sorted(e.done for e in tiles) and tiles[-1].done == tiles[-1].total
    assert [(e.name, e.status) for e in dones] == [("nuclei", "done"), ("hela", "done"), ("broken", "failed")]
    assert "dimensions" in dones[-1].message and dones[-1].result is None
    assert set(results) == {"nuclei", "hela"}
    for name in results:
        expected = segment_image(images[name], model, output="semantic", tile_size=TILE, device="cpu")
        assert np.array_equal(results[name], expected)
        assert np.array_equal(dones[["nuclei", "hela"].index(name)].result, expected)


def test_segment_arrays_stops_when_closed(nuclei):
    gen = segment_arrays({"a": nuclei, "b": nuclei}, instances_model(), output_type="semantic", tile_size=TILE,
                         device="cpu")
    first = next(gen)
    assert isinstance(first, TileDone) and first.done < first.total
    gen.close()  # what napari's worker.quit() amounts to
    with pytest.raises(StopIteration):
        next(gen)


# ---------------------------------------------------------------------------- files
def _write_inputs(folder: Path, nuclei: np.ndarray, hela: np.ndarray) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(folder / "nuclei.tif", nuclei)
    tifffile.imwrite(folder / "hela.tif", hela, compression="zlib")
    (folder / "corrupt.tif").write_bytes(b"II*\x00 this is not a tiff")
    return [folder / "nuclei.tif", folder / "corrupt.tif", folder / "hela.tif"]


def test_segment_files_skips_unreadable_and_goes_on(tmp_path, nuclei, hela):
    model = instances_model()
    paths = _write_inputs(tmp_path / "in", nuclei, hela)
    events, results = drain(segment_files(paths, model, tmp_path / "out", output_type="semantic",
                                          tile_size=TILE, device="cpu"), keep_events=True)
    items = [e for e in events if isinstance(e, ItemDone)]
    assert [(Path(e.name).name, e.status) for e in items] == [
        ("nuclei.tif", "done"), ("corrupt.tif", "failed"), ("hela.tif", "done")]
    assert "cannot read" in items[1].message
    assert results[str(paths[1])].startswith("error:")
    for src in (paths[0], paths[2]):
        out = tifffile.imread(tmp_path / "out" / f"{src.stem}_semantic.tif")
        assert np.array_equal(out, segment_image(tifffile.imread(src), model, output="semantic",
                                                 tile_size=TILE, device="cpu"))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["hela_semantic.tif", "nuclei_semantic.tif"]


def test_resume_skips_complete_outputs(tmp_path, nuclei, hela, monkeypatch):
    model = instances_model()
    paths = _write_inputs(tmp_path / "in", nuclei, hela)[::2]
    out = tmp_path / "out"
    drain(segment_files(paths, model, out, output_type="semantic", tile_size=TILE, device="cpu"))
    first = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    # an interrupted earlier run left a hidden temporary file: not mistaken for a result
    (out / ".nuclei_semantic.tif.abc.tmp").write_bytes(b"half")
    calls = []
    real = batch.read_image
    monkeypatch.setattr(batch.files, "read_image", lambda p, *a, **k: calls.append(p) or real(p, *a, **k))
    events, _ = drain(segment_files(paths, model, out, output_type="semantic", tile_size=TILE, device="cpu"),
                      keep_events=True)
    assert [e.status for e in events if isinstance(e, ItemDone)] == ["skipped", "skipped"]
    assert not any(isinstance(e, TileDone) for e in events) and calls == []  # nothing read or computed
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if not p.name.startswith(".")} == first
    # a missing result is recomputed, the others still skipped
    (out / "hela_semantic.tif").unlink()
    events, _ = drain(segment_files(paths, model, out, output_type="semantic", tile_size=TILE, device="cpu"),
                      keep_events=True)
    assert [e.status for e in events if isinstance(e, ItemDone)] == ["skipped", "done"]
    events, _ = drain(segment_files(paths, model, out, output_type="semantic", overwrite=True,
                                    tile_size=TILE, device="cpu"), keep_events=True)
    assert [e.status for e in events if isinstance(e, ItemDone)] == ["done", "done"]


def test_inputs_are_never_overwritten(tmp_path, nuclei):
    folder = tmp_path / "d"
    folder.mkdir()
    tifffile.imwrite(folder / "a.tif", nuclei)
    tifffile.imwrite(folder / "a_semantic.tif", nuclei[:50])  # an input named like a.tif's result
    before = (folder / "a_semantic.tif").read_bytes()
    events, results = drain(segment_files([folder], instances_model(), folder, output_type="semantic",
                                          tile_size=TILE, device="cpu"), keep_events=True)
    statuses = {Path(e.name).name: e.status for e in events if isinstance(e, ItemDone)}
    assert statuses["a.tif"] == "failed" and "refusing to overwrite" in results[str(folder / "a.tif")]
    assert (folder / "a_semantic.tif").read_bytes() == before
    # one input written onto itself
    events, _ = drain(segment_files([folder / "a.tif"], instances_model(), folder / "a.tif", tile_size=TILE,
                                    device="cpu"), keep_events=True)
    assert [e.status for e in events if isinstance(e, ItemDone)] == ["failed"]
    assert np.array_equal(tifffile.imread(folder / "a.tif"), nuclei)


def test_cli_glob_folder_resume_and_exit_code(tmp_path, nuclei, hela, model_file, capsys):
    _write_inputs(tmp_path / "in", nuclei, hela)
    args = ["segment", str(tmp_path / "in" / "*.tif"), "-o", str(tmp_path / "out"), "-m", str(model_file),
            "--output-type", "semantic", "--tile-size", str(TILE), "--device", "cpu", "-q"]
    assert main(args) == 1  # corrupt.tif failed, after the others were done
    err = capsys.readouterr().err
    assert "corrupt.tif" in err and "2 done, 0 skipped" in err and "1 failed" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["hela_semantic.tif", "nuclei_semantic.tif"]
    (tmp_path / "in" / "corrupt.tif").unlink()
    assert main(args[:1] + [str(tmp_path / "in")] + args[2:-1]) == 0  # a folder; resumed: all skipped
    assert "0 done, 2 skipped" in capsys.readouterr().err


# ---------------------------------------------------------------------------- zarr, block by block
@pytest.mark.parametrize("output", ["semantic", "probabilities"])
def test_zarr_in_zarr_out_equals_in_memory(tmp_path, hela, output):
    import zarr

    model = instances_model()
    src = zarr.open_array(store=str(tmp_path / "in.zarr"), mode="w", shape=hela.shape, chunks=(1, 64, 64),
                          dtype=hela.dtype)
    src[...] = hela
    events, dest = drain(segment_to_zarr(src, model, tmp_path / "out.zarr", output_type=output,
                                         tile_size=TILE, block_size=100, device="cpu"), keep_events=True)
    got = zarr.open_array(store=str(dest), mode="r")
    from napari_unet.core.predict.blocks import block_grid

    grid = block_grid(model.config, hela.shape[-2:], TILE, 100)
    assert all(b % k == 0 for b, k in zip(grid.block, grid.plan.keep, strict=True))
    assert got.chunks[-2:] == grid.block  # blocks on the tile step: one zarr chunk each
    expected = segment_image(hela, model, output=output, tile_size=TILE, device="cpu")
    assert np.array_equal(got[...], expected)
    assert events[-1].done == events[-1].total
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no scratch left


def test_zarr_with_tta_equals_in_memory(tmp_path, hela):
    import zarr

    model = instances_model()
    events, dest = drain(segment_to_zarr(hela[:1], model, tmp_path / "out.zarr", output_type="probabilities",
                                         tile_size=TILE, block_size=100, device="cpu", tta=True), keep_events=True)
    got = zarr.open_array(store=str(dest), mode="r")[...]
    expected = segment_image(hela[:1], model, output="probabilities", tile_size=TILE, device="cpu", tta=True)
    plain = segment_image(hela[:1], model, output="probabilities", tile_size=TILE, device="cpu")
    np.testing.assert_array_equal(got, expected)
    assert np.abs(got - plain).max() > 1e-3


@pytest.mark.parametrize("post", [
    Postprocessing(instance_classes=(1,), min_size=5),
    Postprocessing(instance_classes=(1,), grow_classes=(0,), min_size=10),
], ids=["components", "grow"])
def test_zarr_instances_equal_in_memory_up_to_relabelling(tmp_path, hela, post):
    import dask.array as da
    import zarr

    model = instances_model(post)
    # a dask input; small blocks and halo so that objects cross block borders and growth needs retries
    dest = drain(segment_to_zarr(da.from_array(hela, chunks=(1, 50, 50)), model, tmp_path / "i.zarr",
                                 tile_size=TILE, block_size=50, device="cpu", grow_halo=2))
    got = zarr.open_array(store=str(dest), mode="r")[...]
    expected = segment_image(hela, model, output="instances", tile_size=TILE, device="cpu")
    assert expected.max() > 20  # enough objects for the test to mean something
    for z in range(len(hela)):
        assert is_relabelling(got[z], expected[z])


@pytest.mark.parametrize("block", [9, 16, 33])
def test_blockwise_labels_exact_on_random_maps(tmp_path, block):
    import zarr

    rng = np.random.default_rng(block)
    sem = (rng.random((2, 37, 45)) < 0.45).astype(np.uint8) + (rng.random((2, 37, 45)) < 0.2)
    for post in (Postprocessing(instance_classes=(1,), min_size=3),
                 Postprocessing(instance_classes=(2,), grow_classes=(1,), min_size=4)):
        out = tmp_path / f"{block}_{post.grow_classes}.zarr"
        drain(instances_to_zarr(sem, out, post, block_size=block, grow_halo=1))
        got = zarr.open_array(store=str(out), mode="r")[...]
        for z in range(2):
            assert is_relabelling(got[z], instances_from_semantic(sem[z], post))


def test_files_zarr_output_and_resume(tmp_path, hela, model_file):
    import zarr

    model = instances_model()
    src = zarr.open_array(store=str(tmp_path / "stack.zarr"), mode="w", shape=hela.shape, dtype=hela.dtype)
    src[...] = hela
    tifffile.imwrite(tmp_path / "plane.tif", hela[0])
    events, results = drain(segment_files([tmp_path / "stack.zarr", tmp_path / "plane.tif"], model,
                                          tmp_path / "out", output_type="semantic", tile_size=TILE,
                                          block_size=100, device="cpu"), keep_events=True)
    assert results[str(tmp_path / "stack.zarr")].endswith("stack_semantic.zarr")  # zarr in -> zarr out
    assert results[str(tmp_path / "plane.tif")].endswith("plane_semantic.tif")
    got = zarr.open_array(store=str(tmp_path / "out" / "stack_semantic.zarr"), mode="r")[...]
    assert np.array_equal(got, segment_image(hela, model, output="semantic", tile_size=TILE, device="cpu"))
    before = os.stat(tmp_path / "out" / "stack_semantic.zarr" / "zarr.json").st_mtime_ns
    events, _ = drain(segment_files([tmp_path / "stack.zarr"], model, tmp_path / "out" / "stack_semantic.zarr",
                                    output_type="semantic", tile_size=TILE, device="cpu"), keep_events=True)
    assert [e.status for e in events] == ["skipped"]
    assert os.stat(tmp_path / "out" / "stack_semantic.zarr" / "zarr.json").st_mtime_ns == before


@pytest.mark.parametrize("split", ["watershed", "seeded"])
def test_zarr_refuses_watershed_instances(tmp_path, nuclei, split):
    model = instances_model(Postprocessing(split=split))
    with pytest.raises(ValueError, match="watershed"):
        drain(segment_to_zarr(nuclei, model, tmp_path / "o.zarr", tile_size=TILE, device="cpu"))
    assert not any(tmp_path.iterdir())


def test_zarr_cancel_leaves_no_partial_output(tmp_path, hela):
    gen = segment_to_zarr(hela, instances_model(), tmp_path / "o.zarr", output_type="semantic", tile_size=TILE,
                          block_size=56, device="cpu")
    ev = next(gen)
    assert ev.done < ev.total
    assert any(p.name.startswith(".o.zarr") for p in tmp_path.iterdir())  # work in progress, hidden
    gen.close()  # Cancel
    assert list(tmp_path.iterdir()) == []  # neither a half result under the final name nor scratch


# ---------------------------------------------------------------------------- zarr outputs and their lock
def test_an_empty_folder_at_a_zarr_output_is_not_already_complete(tmp_path):
    import zarr

    img = np.random.default_rng(0).integers(0, 255, (60, 70)).astype(np.uint8)
    src = tmp_path / "img.tif"
    tifffile.imwrite(src, img)
    dest = tmp_path / "res.zarr"
    dest.mkdir()
    results = drain(segment_files([src], tiny_model(eval_mode=True), dest, output_type="semantic",
                                  tile_size=44, device="cpu"))
    assert results[str(src)] == str(dest)
    got = zarr.open_array(str(dest), mode="r")[...]
    assert np.array_equal(got, segment_image(img, tiny_model(eval_mode=True), output="semantic", tile_size=44,
                                             device="cpu"))
    # a folder holding something else is neither skipped nor deleted
    other = tmp_path / "other.zarr"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    results = drain(segment_files([src], tiny_model(eval_mode=True), other, output_type="semantic",
                                  tile_size=44, device="cpu"))
    assert results[str(src)].startswith("error:") and "without zarr metadata" in results[str(src)]
    assert (other / "notes.txt").read_text() == "mine"


def test_two_runs_on_one_zarr_output_the_second_is_refused_and_the_first_is_complete(tmp_path):
    import zarr

    img = np.random.default_rng(1).integers(0, 255, (120, 130)).astype(np.uint8)
    dest = tmp_path / "res.zarr"
    kw = dict(output_type="semantic", tile_size=100, block_size=60, device="cpu")
    first = segment_to_zarr(img, tiny_model(eval_mode=True), dest, **kw)
    next(first)  # running: it holds the lock
    with pytest.raises(OutputBusyError, match="another napari-unet run is writing"):
        drain(segment_to_zarr(img, tiny_model(eval_mode=True), dest, **kw))
    assert drain(first) == dest
    ref = segment_image(img, tiny_model(eval_mode=True), output="semantic", tile_size=100, device="cpu")
    assert np.array_equal(zarr.open_array(str(dest), mode="r")[...], ref)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # lock and partial gone
    # once the first has finished, a rerun may replace the output
    assert drain(segment_to_zarr(img, tiny_model(eval_mode=True), dest, **kw)) == dest


def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path):
    import socket
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    dest = tmp_path / "res.zarr"
    (tmp_path / ".res.zarr.lock").write_text(f"{socket.gethostname()} {dead}\n")
    with output_lock(dest):
        assert (tmp_path / ".res.zarr.lock").read_text().split()[1] != dead
    assert not (tmp_path / ".res.zarr.lock").exists()
