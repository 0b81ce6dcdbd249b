"""The bad-input matrix (issue 14): what a careful user and a hostile file try, against the core, the
CLI and the model files. Each case asserts its outcome (a clear error that names the problem, or a
correct result) and that the inputs are unchanged. A property test covers random shapes, dtypes,
value ranges, tile sizes and paddings. Widget cases are in tests/test_widgets_bad_inputs.py."""

from __future__ import annotations

import os
import pickle
import socket
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from helpers import tiny_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_unet.cli.main import main
from napari_unet.core.exchange.opening import load_model
from napari_unet.core.modelfile.files import ModelFileError, UNetModel, save_model
from napari_unet.core.network.unet import UNet, UNetConfig
from napari_unet.core.predict.checks import smallest_tile
from napari_unet.core.predict.predict2d import predict_image
from napari_unet.core.segment import segment_image

MODEL = tiny_model(eval_mode=True)
SMALLEST = smallest_tile(MODEL.config)  # 44
RNG = np.random.default_rng(0)
GREY = RNG.integers(0, 4000, (40, 50)).astype(np.uint16)


# ---------------------------------------------------------------------------- core
def _nan():
    a = GREY.astype(np.float32)
    a[3, 4] = np.nan
    return a


def _inf():
    a = GREY.astype(np.float64)
    a[0, 0] = -np.inf
    return a


def _huge_uint64():
    return GREY.astype(np.uint64) * np.uint64(4096) + np.uint64(2**63)


OK, ERR = "ok", "error"
CORE_CASES = [
    # id, image factory, segment kwargs, expected: OK (and equal to the numpy result where given) or
    # (exception type, words the message must contain)
    ("list of rows", lambda: GREY.tolist(), {}, (OK, GREY)),
    ("torch tensor", lambda: torch.from_numpy(GREY.astype(np.float32)), {}, (OK, GREY.astype(np.float32))),
    ("ragged list", lambda: [[1, 2, 3], [1, 2]], {}, (TypeError, "different lengths")),
    ("a string", lambda: "image.tif", {}, (TypeError, "must be an array")),
    ("a dict", lambda: {"data": GREY}, {}, (TypeError, "must be an array")),
    ("complex", lambda: GREY.astype(complex), {}, (ValueError, "dtype")),
    ("object dtype", lambda: GREY.astype(object), {}, (ValueError, "dtype")),
    ("1D", lambda: GREY[0], {}, (ValueError, "at least 2 dimensions")),
    ("empty stack", lambda: np.zeros((0, 64, 64), np.uint8), {}, (ValueError, "length 0")),
    ("empty rows", lambda: np.zeros((64, 0), np.uint8), {}, (ValueError, "length 0")),
    ("NaN", _nan, {}, (ValueError, "NaN")),
    ("-inf", _inf, {}, (ValueError, "NaN or infinite")),
    ("uint64 above 2**63", _huge_uint64, {}, (OK, GREY.astype(np.uint64) * np.uint64(4096))),
    ("float64 x 1e300", lambda: GREY * 1e300, {}, (OK, GREY.astype(np.float64))),
    ("float64 x 1e-300", lambda: GREY * 1e-300, {}, (OK, GREY.astype(np.float64))),
    ("bool", lambda: GREY > 2000, {}, (OK, None)),
    ("constant", lambda: np.full((40, 50), 7, np.int16), {}, (OK, None)),
    ("one pixel", lambda: np.ones((1, 1), np.float32), {}, (OK, None)),
    ("tile_size as text", lambda: GREY, {"tile_size": "256"}, (TypeError, "tile_size")),
    ("tile_size NaN", lambda: GREY, {"tile_size": float("nan")}, (ValueError, "tile_size")),
    ("tile_size 1-tuple", lambda: GREY, {"tile_size": (256,)}, (ValueError, "tile_size")),
    ("tile_size 2.5", lambda: GREY, {"tile_size": 2.5}, (ValueError, "tile_size")),
    ("tile_size True", lambda: GREY, {"tile_size": True}, (TypeError, "tile_size")),
    ("tile_size negative", lambda: GREY, {"tile_size": -64}, (ValueError, "tile_size must be positive")),
    ("tile_size 2", lambda: GREY, {"tile_size": 2}, (ValueError, f"smallest tile this model can use ({SMALLEST}")),
    ("tile_size 64.0", lambda: GREY, {"tile_size": 64.0}, (OK, GREY)),
    ("padding wrap", lambda: GREY, {"padding": "wrap"}, (ValueError, "padding")),
    ("output foo", lambda: GREY, {"output": "foo"}, (ValueError, "output")),
    ("axes for another shape", lambda: GREY, {"axes": "ZYX"}, (ValueError, "axes")),
    ("rgb for a grey model", lambda: np.zeros((40, 50, 3), np.uint8), {"rgb": True},
     (ValueError, "RGB/multichannel")),
    ("batch_size 0", lambda: GREY, {"batch_size": 0}, (ValueError, "batch_size")),
]


@pytest.mark.parametrize("image, kwargs, expected", [c[1:] for c in CORE_CASES], ids=[c[0] for c in CORE_CASES])
def test_core_bad_input(image, kwargs, expected):
    img = image()
    before = pickle.dumps(img) if not isinstance(img, torch.Tensor) else img.clone()
    kind, what = expected
    if kind == OK:
        out = segment_image(img, MODEL, output="probabilities", device="cpu", **kwargs)
        assert out.dtype == np.float32 and np.all(np.isfinite(out))
        assert out.shape == (2,) + tuple(np.shape(img))[-2:]
        if what is not None:
            ref = segment_image(what, MODEL, output="probabilities", device="cpu")
            np.testing.assert_allclose(out, ref, atol=1e-4)
    else:
        with pytest.raises(kind) as info:
            segment_image(img, MODEL, device="cpu", **kwargs)
        assert what in str(info.value)
    if isinstance(img, torch.Tensor):
        assert torch.equal(img, before)
    else:
        assert pickle.dumps(img) == before  # the input is unchanged


CHANNEL_CASES = [
    # (image shape, model channels, axes, words)
    ((2, 40, 50), 3, None, "has no channel axis"),
    ((2, 40, 50), 3, "CYX", "has 2 along its channel axis C"),
    ((40, 50, 2), 2, None, "give axes='YXC'"),
]


@pytest.mark.parametrize("shape, channels, axes, words", CHANNEL_CASES)
def test_channel_messages_say_what_was_read(shape, channels, axes, words):
    with pytest.raises(ValueError) as info:
        segment_image(np.zeros(shape, np.uint8), tiny_model(in_channels=channels, eval_mode=True), axes=axes,
                      device="cpu")
    msg = str(info.value)
    assert words in msg
    if axes is not None:
        assert "give the channel axis with axes" not in msg  # it was given


# ---------------------------------------------------------------------------- model files
class _Payload:
    """Unpickling this writes a marker file: proof that code ran."""

    marker = ""

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "ran"))


def _model_file(kind: str, tmp: Path) -> Path:
    good = save_model(tiny_model(eval_mode=True), tmp / "good.safetensors")
    data = good.read_bytes()
    p = tmp / f"{kind}.safetensors"
    if kind == "empty":
        p.write_bytes(b"")
    elif kind == "random bytes":
        p.write_bytes(os.urandom(4096))
    elif kind == "truncated":
        p.write_bytes(data[: len(data) // 2])
    elif kind == "header only":
        p.write_bytes(data[:200])
    elif kind == "nan weights":
        m = tiny_model(eval_mode=True)
        with torch.no_grad():
            m.net.down[0][0].weight.fill_(float("nan"))
        save_model(m, p)
    elif kind == "inf weights":
        m = tiny_model(eval_mode=True)
        with torch.no_grad():
            m.net.head.bias[1] = float("inf")
        save_model(m, p)
    elif kind in ("pickle payload", "pickle payload .pt"):
        payload = _Payload()
        payload.marker = str(tmp / "PWNED")
        p = p.with_suffix(".pt") if kind.endswith(".pt") else p
        torch.save({"state_dict": payload}, p)
    elif kind == "wrong architecture":
        other = save_model(UNetModel(UNet(UNetConfig(depth=3, base_channels=4))), tmp / "d3.safetensors")
        import json

        from safetensors import safe_open
        from safetensors.torch import load_file, save_file

        with safe_open(str(other), framework="pt") as f:
            header = json.loads(f.metadata()["napari_unet"])
        header["architecture"]["depth"] = 2
        save_file(load_file(str(other)), str(p), metadata={"napari_unet": json.dumps(header)})
    elif kind == "a folder":
        p = tmp / "folder.safetensors"
        p.mkdir()
    return p


MODEL_FILE_CASES = [
    ("empty", "not a readable model file"),
    ("random bytes", "not a readable model file"),
    ("truncated", "model file"),
    ("header only", "model file"),
    ("nan weights", "NaN or infinite"),
    ("inf weights", "NaN or infinite"),
    ("pickle payload", "not a readable model file"),
    ("pickle payload .pt", "not a readable model file"),
    ("wrong architecture", "do not match its architecture"),
    ("a folder", "no model file"),
]


@pytest.mark.parametrize("kind, words", MODEL_FILE_CASES, ids=[c[0] for c in MODEL_FILE_CASES])
def test_bad_model_file(tmp_path, kind, words, capsys):
    path = _model_file(kind, tmp_path)
    before = path.read_bytes() if path.is_file() else None
    with pytest.raises(ModelFileError) as info:
        load_model(path)
    assert words in str(info.value)
    assert not (tmp_path / "PWNED").exists()  # no code from the file ran
    # the CLI says the same in one line, exit code 2
    img = tmp_path / "img.tif"
    tifffile.imwrite(img, GREY)
    assert main(["segment", str(img), "--model", str(path), "-o", str(tmp_path / "o.tif"), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("napari-unet segment: error:") and words in err and "Traceback" not in err
    assert not (tmp_path / "PWNED").exists()
    if before is not None:
        assert path.read_bytes() == before


# ---------------------------------------------------------------------------- CLI
def _corrupt_tiff(p: Path) -> Path:
    tifffile.imwrite(p, GREY)
    p.write_bytes(b"II*\x00" + b"\xff" * 100)
    return p


def _cli_case(name: str, tmp: Path) -> tuple[list[str], list[Path]]:
    """argv for case ``name`` and the input files it must leave unchanged."""
    model = save_model(tiny_model(eval_mode=True), tmp / "tiny.safetensors")
    img = tmp / "img.tif"
    tifffile.imwrite(img, GREY)
    seg = ["segment", str(img), "--model", str(model), "--device", "cpu", "-q"]
    if name == "input missing":
        return ["segment", str(tmp / "nope.tif"), "--model", str(model), "-o", str(tmp / "o.tif"), "-q"], []
    if name == "tile size 2":
        return seg + ["-o", str(tmp / "o.tif"), "--tile-size", "2"], [img]
    if name == "output under a file":
        (tmp / "afile").write_text("x")
        return seg + ["-o", str(tmp / "afile" / "o.tif")], [img, tmp / "afile"]
    if name == "zarr output under a file":
        (tmp / "afile").write_text("x")
        return seg + ["-o", str(tmp / "afile" / "o.zarr")], [img, tmp / "afile"]
    if name == "corrupt input":
        bad = _corrupt_tiff(tmp / "bad.tif")
        return ["segment", str(bad), "--model", str(model), "-o", str(tmp / "o.tif"), "-q"], [bad]
    if name == "zarr output busy":
        (tmp / ".o.zarr.lock").write_text(f"{socket.gethostname()} {os.getpid()}\n")
        return seg + ["-o", str(tmp / "o.zarr")], [img]
    if name == "axes for another shape":
        return seg + ["-o", str(tmp / "o.tif"), "--axes", "ZYX"], [img]
    if name == "model missing":
        return ["segment", str(img), "--model", str(tmp / "none.safetensors"), "-o", str(tmp / "o.tif")], [img]
    if name == "evaluate corrupt pred":
        bad = _corrupt_tiff(tmp / "bad.tif")
        return ["evaluate", str(bad), str(img)], [bad, img]
    if name == "evaluate negative labels":
        neg = tmp / "neg.tif"
        tifffile.imwrite(neg, -np.ones((40, 50), np.int16))
        return ["evaluate", str(neg), str(img)], [neg, img]
    labels = tmp / "labels.tif"
    lab = np.zeros((40, 50), np.int16)
    lab[5:15, 5:15] = 1
    lab[20:30, 20:30] = 2
    if name == "train labels -1":
        lab[30:, 30:] = -1
    tifffile.imwrite(labels, lab)
    image = img
    if name == "train rgb with 2D labels":
        image = tmp / "rgb.tif"
        tifffile.imwrite(image, np.stack([GREY] * 3, -1).astype(np.uint8), photometric="rgb")
    if name == "train corrupt image":
        image = _corrupt_tiff(tmp / "bad.tif")
    return ["train", "--images", str(image), "--labels", str(labels), "--steps", "1", "--patch-size", "32",
            "--batch-size", "1", "--device", "cpu", "-o", str(tmp / "m.safetensors"), "-q"], [image, labels]


CLI_CASES = [
    # name, exit code, words in stderr
    ("input missing", 1, "does not exist"),
    ("tile size 2", 1, "smallest tile"),
    ("output under a file", 1, "is a file, not a folder"),
    ("zarr output under a file", 1, "is a file, not a folder"),
    ("corrupt input", 1, "cannot read"),
    ("zarr output busy", 1, "another napari-unet run is writing"),
    ("axes for another shape", 1, "axes"),
    ("model missing", 2, "no model file"),
    ("evaluate corrupt pred", 2, "could not read PRED"),
    ("evaluate negative labels", 2, "negative"),
    ("train labels -1", 2, "negative values"),
    ("train rgb with 2D labels", 2, "colour channels"),
    ("train corrupt image", 2, "cannot read"),
]


@pytest.mark.parametrize("name, code, words", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input(tmp_path, capsys, name, code, words):
    argv, inputs = _cli_case(name, tmp_path)
    before = {p: p.read_bytes() for p in inputs}
    assert main(argv) == code
    err = capsys.readouterr().err
    assert words in err, err
    assert "Traceback" not in err
    assert {p: p.read_bytes() for p in inputs} == before
    assert not (tmp_path / "o.tif").exists() and not (tmp_path / "m.safetensors").exists()


# ---------------------------------------------------------------------------- property test
DTYPES = [np.uint8, np.uint16, np.int16, np.int32, np.uint64, np.float32, np.float64, np.bool_]


@st.composite
def images(draw):
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    planes = draw(st.sampled_from([(), (1,), (2,)]))
    h, w = draw(st.integers(1, 70)), draw(st.integers(1, 70))
    shape = planes + (h, w)
    values = draw(st.sampled_from(["random", "extremes", "constant"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    if dtype == np.bool_:
        a = rng.random(shape) > 0.5 if values != "constant" else np.ones(shape, bool)
    elif dtype.kind in "iu":
        info = np.iinfo(dtype)
        if values == "random":
            a = rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
        elif values == "extremes":
            a = np.where(rng.random(shape) > 0.5, info.max, info.min).astype(dtype)
        else:
            a = np.full(shape, info.max, dtype)
    else:
        scale = draw(st.sampled_from([1e-300, 1e-30, 1.0, 1e30, 1e300] if dtype == np.float64
                                     else [1e-30, 1.0, 1e30]))
        if values == "random":
            a = (rng.normal(size=shape) * scale).astype(dtype)
        elif values == "extremes":
            f = np.finfo(dtype)
            a = np.where(rng.random(shape) > 0.5, f.max, f.min).astype(dtype)
        else:
            a = np.full(shape, scale, dtype)
    return a


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(img=images(), tile=st.one_of(st.none(), st.integers(0, 60), st.tuples(st.integers(0, 60),
                                                                                st.integers(0, 60))),
       padding=st.sampled_from(["mirror", "zero"]), output=st.sampled_from(["probabilities", "instances"]))
def test_segment_either_refuses_or_gives_a_correct_result(img, tile, padding, output):
    tile_size = None if tile is None else (SMALLEST + tile if isinstance(tile, int)
                                           else (SMALLEST + tile[0], SMALLEST + tile[1]))
    before = img.copy()
    try:
        out = segment_image(img, MODEL, output=output, tile_size=tile_size, padding=padding, device="cpu")
    except (ValueError, TypeError) as exc:  # the documented errors, each with a message
        assert len(str(exc)) > 20
        return
    finally:
        assert np.array_equal(img, before)
    planes = img.shape[:-2]
    if output == "probabilities":
        assert out.shape == planes + (2,) + img.shape[-2:] and out.dtype == np.float32
        assert np.all(np.isfinite(out)) and np.allclose(out.sum(-3), 1, atol=1e-4)
        # equal to the whole image in one tile (exact overlap-tile, for both paddings)
        whole = predict_image(img, MODEL, tile_size=256, padding=padding, device="cpu")
        np.testing.assert_allclose(out, whole, atol=1e-5)
    else:
        assert out.shape == img.shape and out.dtype in (np.uint16, np.uint32)


# ---------------------------------------------------------------------------- integers beyond float
@pytest.fixture(scope="module")
def nuclei_crop(nuclei_image):
    return nuclei_image[:128, :128].copy()  # 10 nuclei, values 23..235


def test_a_uint64_image_above_2_53_segments_as_it_would_without_its_offset(nuclei_crop, nuclei_model):
    """uint64 values 2**60 + a camera's counts: float64 holds them 256 apart, and the image became
    one or two grey values (3 of 10 nuclei, 0 on other crops). The minimum is now subtracted in
    integers first."""
    from napari_unet.core.modelfile.normalization import integer_offset

    want = segment_image(nuclei_crop.astype(np.uint64), nuclei_model, device="cpu")
    assert want.max() >= 5  # the unshifted crop has its nuclei
    shifted = {
        "uint64 + 2**60": nuclei_crop.astype(np.uint64) + np.uint64(2**60),
        "uint64 + 2**64 - 2**12": nuclei_crop.astype(np.uint64) + np.uint64(2**64 - 2**12),
        "int64 - 2**62": nuclei_crop.astype(np.int64) - np.int64(2**62),
        "uint32 + 2**30": nuclei_crop.astype(np.uint32) + np.uint32(2**30),  # float32: 128 apart
    }
    for what, img in shifted.items():
        before = img.copy()
        assert integer_offset(img) != 0, what
        got = segment_image(img, nuclei_model, device="cpu")
        np.testing.assert_array_equal(got, want, err_msg=what)
        np.testing.assert_array_equal(img, before)  # the input is not modified
    # semantic output and a lazy (dask) stack take the same path
    import dask.array as da

    img = shifted["uint64 + 2**60"]
    np.testing.assert_array_equal(
        segment_image(img, nuclei_model, output="semantic", device="cpu"),
        segment_image(nuclei_crop.astype(np.uint64), nuclei_model, output="semantic", device="cpu"))
    lazy = da.from_array(np.stack([img, img]), chunks=(1, 64, 64))
    np.testing.assert_array_equal(segment_image(lazy, nuclei_model, device="cpu"), np.stack([want, want]))
    # images that floats hold exactly are read as they are
    for ok in (nuclei_crop, nuclei_crop.astype(np.uint64) + np.uint64(2**40),
               np.array([[0, 2**63]], np.uint64)):  # a spread beyond 2**62: floats keep its contrast
        assert integer_offset(ok) == 0


def test_paths_that_cannot_subtract_the_offset_refuse_with_a_message(nuclei_crop):
    """The normalisation's statistics (every path: tiles, training, Live, zarr blocks) refuse an
    integer image whose contrast floats would lose, instead of giving 0 objects without a word."""
    from napari_unet.core.modelfile.normalization import Normalization
    from napari_unet.core.train import prepare_data

    img = nuclei_crop.astype(np.uint64) + np.uint64(2**60)
    for mode in ("percentile", "minmax"):
        with pytest.raises(ValueError, match=r"contrast would be lost.*Subtract the image's minimum"):
            Normalization(mode).stats(img)
    with pytest.raises(ValueError, match="Subtract the image's minimum"):
        predict_image(img, MODEL, device="cpu")  # the tiler alone: no offset removed
    lab = np.zeros(img.shape, np.int32)
    lab[10:20, 10:20] = 1
    with pytest.raises(ValueError, match="Subtract the image's minimum"):
        prepare_data(img, lab, config=MODEL.config, normalization=Normalization(), mode="binary")
    # still fine: a constant image (no contrast to lose) and one whose contrast floats keep
    Normalization().stats(np.full((8, 8), 2**60, np.uint64))
    coarse = nuclei_crop.astype(np.uint64) * np.uint64(2**20) + np.uint64(2**60)
    Normalization().stats(coarse)


@pytest.mark.parametrize("shape", [(0, 64, 64), (64, 0), (0, 0), (3, 0, 64, 64)])
def test_a_zero_length_axis_is_a_clear_error_not_none(shape):
    with pytest.raises(ValueError, match="length 0"):
        segment_image(np.zeros(shape, np.uint8), tiny_model(eval_mode=True), device="cpu")
    with pytest.raises(ValueError, match="length 0"):
        predict_image(np.zeros(shape, np.uint8), tiny_model(eval_mode=True), device="cpu")
