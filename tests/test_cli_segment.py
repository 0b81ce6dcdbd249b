"""`napari-unet segment` on real files."""

import os

import numpy as np
import pytest
import tifffile
from helpers import tiny_model

from napari_unet.cli.main import main
from napari_unet.core.exchange.opening import load_model
from napari_unet.core.modelfile.files import save_model
from napari_unet.core.segment import segment_image


@pytest.fixture()
def real_image(nuclei_image):
    """A 200 x 240 crop of the DSB nuclei sample image."""
    return nuclei_image[:200, :240].copy()


@pytest.fixture()
def model_file(tmp_path):
    return save_model(tiny_model(), tmp_path / "tiny")


def test_segment_one_file_equals_python_api(tmp_path, real_image, model_file):
    img = real_image
    src = tmp_path / "img.tif"
    tifffile.imwrite(src, img)
    before = src.read_bytes()
    out = tmp_path / "labels.tif"
    assert main(["segment", str(src), "--model", str(model_file), "--output", str(out),
                 "--tile-size", "100", "--quiet"]) == 0
    got = tifffile.imread(out)
    ref = segment_image(img, load_model(model_file), output="instances", tile_size=100, device="cpu")
    assert got.shape == img.shape and np.array_equal(got, ref)
    assert src.read_bytes() == before  # input untouched
    # written atomically through a temporary file, yet with the permissions of a normal file
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [q.name for q in tmp_path.iterdir() if q.name.startswith(".")] == []
    # --tta: the 8-orientation average, as the Python API gives it
    out = tmp_path / "probs_tta.tif"
    assert main(["segment", str(src), "--model", str(model_file), "--output", str(out), "--tta",
                 "--output-type", "probabilities", "--tile-size", "100", "--quiet"]) == 0
    ref = segment_image(img, load_model(model_file), output="probabilities", tile_size=100,
                        device="cpu", tta=True)
    plain = segment_image(img, load_model(model_file), output="probabilities", tile_size=100, device="cpu")
    np.testing.assert_array_equal(tifffile.imread(out), ref)
    assert np.abs(ref - plain).max() > 1e-3


def test_segment_many_files_into_folder_and_output_types(tmp_path, real_image, model_file):
    img = real_image
    for name in ("a.tif", "b.tif"):
        tifffile.imwrite(tmp_path / name, img)
    tifffile.imwrite(tmp_path / "stack.tif", np.stack([img, img[::-1]]))
    outdir = tmp_path / "out"
    rc = main(["segment", str(tmp_path / "a.tif"), str(tmp_path / "b.tif"), str(tmp_path / "stack.tif"),
               "--model", str(model_file), "--output", str(outdir), "--output-type", "semantic", "-q"])
    assert rc == 0
    assert tifffile.imread(outdir / "a_semantic.tif").shape == img.shape
    assert tifffile.imread(outdir / "stack_semantic.tif").shape == (2,) + img.shape
    rc = main(["segment", str(tmp_path / "a.tif"), "--model", str(model_file), "--output",
               str(tmp_path / "p.tif"), "--output-type", "probabilities", "-q"])
    assert rc == 0 and tifffile.imread(tmp_path / "p.tif").shape == (2,) + img.shape


def test_segment_errors_are_clear(tmp_path, real_image, model_file, capsys):
    img = real_image
    good = tmp_path / "good.tif"
    tifffile.imwrite(good, img)
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"not a tiff")
    rgb = tmp_path / "rgb.tif"
    tifffile.imwrite(rgb, np.zeros((40, 40, 3), np.uint8), photometric="rgb")
    outdir = tmp_path / "out"
    rc = main(["segment", str(bad), str(tmp_path / "missing.tif"), str(rgb), str(good), "--model",
               str(model_file), "--output", str(outdir), "-q"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "bad.tif" in err and "missing.tif" in err and "does not exist" in err
    assert "RGB" in err
    assert (outdir / "good_instances.tif").exists()  # the good one was still done
    assert main(["segment", str(good), "--model", str(tmp_path / "nomodel"), "-o", str(tmp_path / "x.tif")]) == 2
    assert "no model file" in capsys.readouterr().err
    # refusing to overwrite the input
    assert main(["segment", str(good), "--model", str(model_file), "-o", str(good), "-q"]) == 1
    assert np.array_equal(tifffile.imread(good), img)
