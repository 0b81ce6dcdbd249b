"""bioimage.io packages: export of each shipped model validated offline by bioimageio.spec, the package's
own test run by bioimageio.core, exact round trip into napari-unet, a foreign-style package through our
tiler, and clear refusals of what we cannot run."""

from __future__ import annotations

import socket
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

pytest.importorskip("bioimageio.spec")
pytest.importorskip("onnx")

from napari_unet.core.events import run_to_end  # noqa: E402
from napari_unet.core.exchange.opening import load_model  # noqa: E402
from napari_unet.core.modelfile.files import ModelFileError  # noqa: E402


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Everything here must work offline: any attempt to open a connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    from napari_unet.core.exchange.bioimageio import export_bioimageio

    d = tmp_path_factory.mktemp("packages")
    return {name: run_to_end(export_bioimageio(load_model(name), d / f"{name}.zip")) for name in ("nuclei", "em")}


@pytest.mark.parametrize("name", ["nuclei", "em"])
def test_shipped_model_package_is_valid_offline(packages, name):
    from bioimageio.spec import load_model_description

    descr = load_model_description(str(packages[name]), perform_io_checks=True)
    assert descr.validation_summary.status in ("valid-format", "passed")
    ipt, out = descr.inputs[0], descr.outputs[0]
    sizes = {str(a.id): a.size for a in ipt.axes if a.type == "space"}
    assert (sizes["y"].min, sizes["y"].step) == (208, 16)  # valid depth-4 U-Net: 208 + n * 16
    assert {str(a.id): a.halo for a in out.axes if a.type == "space"} == {"y": 96, "x": 96}
    (norm,) = [p for p in ipt.preprocessing if p.id == "scale_range"]
    assert (norm.kwargs.min_percentile, norm.kwargs.max_percentile) == (1.0, 99.8)
    assert [str(a) for a in norm.kwargs.axes] == ["y", "x"]  # per sample and channel
    assert ipt.pad.mode == "reflect"  # the paper's mirror padding
    classes = load_model(name).config.class_names
    assert next(a.channel_names for a in out.axes if a.type == "channel") == list(classes)
    assert str(descr.cite[0].doi) == "10.1007/978-3-319-24574-4_28"
    assert str(descr.license) == "BSD-3-Clause" and descr.authors and descr.covers and descr.documentation
    w = descr.weights
    assert w.pytorch_state_dict and w.torchscript and w.onnx
    with zipfile.ZipFile(packages[name]) as z:
        assert "class PackagedUNet(UNet)" in z.read("unet_architecture.py").decode()


def test_package_own_test_passes_with_bioimageio_core(packages):
    """The package's test input through bioimageio.core reproduces its test output (our inference)."""
    pytest.importorskip("bioimageio.core")
    pytest.importorskip("onnxruntime")
    from bioimageio.core import test_model

    summary = test_model(str(packages["nuclei"]))  # every weight format
    failed = [d.name for d in summary.details if d.status == "failed"]
    assert summary.status == "passed", failed
    summary = test_model(str(packages["em"]), weight_format="torchscript")
    assert summary.status == "passed"


def test_bioimageio_core_blockwise_prediction_equals_ours(packages, nuclei_image):
    """The declared halo is the overlap-tile strategy's: bioimageio.core's own tiling (3 x 3 blocks of
    304 px stepping by 112, a multiple of 16) gives our whole-image probabilities."""
    pytest.importorskip("bioimageio.core")
    from bioimageio.core import create_prediction_pipeline, load_model_description, predict

    from napari_unet.core.predict.predict2d import predict_image

    img = nuclei_image[:304, 100:404]  # a valid sample size (208 + 6 * 16)
    pipeline = create_prediction_pipeline(load_model_description(str(packages["nuclei"])),
                                          weight_format="torchscript")
    out = predict(model=pipeline, inputs={"raw": img[None, None].astype(np.float32)}, blocksize_parameter=6)
    got = out.members["probabilities"].data.values[0]
    ours = predict_image(img, load_model("nuclei"), device="cpu")
    assert got.shape == ours.shape
    assert np.abs(got - ours).max() <= 1e-4


@pytest.mark.parametrize("name", ["nuclei", "em"])
def test_round_trip_is_exact(packages, name, nuclei_image):
    import tifffile

    from napari_unet._sample_data import sample_path
    from napari_unet.core.segment import segment_image

    original, back = load_model(name), load_model(packages[name])
    assert back.name == original.name and back.config == original.config
    assert back.normalization == original.normalization and back.postprocessing == original.postprocessing
    for k, t in original.net.state_dict().items():
        assert torch.equal(t, back.net.state_dict()[k])
    img = nuclei_image if name == "nuclei" else tifffile.imread(sample_path("em"))[:300, :300]
    assert np.array_equal(segment_image(img, back, device="cpu"), segment_image(img, original, device="cpu"))


def _rewrite(src: Path, dst: Path, edit_rdf=None, drop=(), replace=None) -> Path:
    import yaml

    with zipfile.ZipFile(src) as z, zipfile.ZipFile(dst, "w") as o:
        for n in z.namelist():
            if n in drop:
                continue
            data = z.read(n)
            if n == "rdf.yaml" and edit_rdf is not None:
                rdf = yaml.safe_load(data)
                edit_rdf(rdf)
                data = yaml.safe_dump(rdf).encode()
            if replace and n in replace:
                data = replace[n]
            o.writestr(n, data)
    return dst


def test_package_without_our_file_loads_our_architecture_without_code(packages, tmp_path, nuclei_image):
    from napari_unet.core.network.unet import UNet
    from napari_unet.core.predict.predict2d import predict_image

    def strip(rdf):
        del rdf["config"]["napari_unet"]
        rdf["attachments"] = []

    pkg = _rewrite(packages["nuclei"], tmp_path / "sd.zip", strip, drop=("nuclei.safetensors",))
    model = load_model(pkg)
    assert type(model.net) is UNet and model.normalization == load_model("nuclei").normalization
    img = nuclei_image[:200, :200]
    expected = predict_image(img, load_model("nuclei"), device="cpu")
    assert np.array_equal(predict_image(img, model, device="cpu"), expected)


def test_corrupt_and_unsupported_packages_say_what_is_wrong(packages, tmp_path):
    good = packages["nuclei"].read_bytes()
    (tmp_path / "truncated.zip").write_bytes(good[: len(good) // 3])
    with pytest.raises(ModelFileError, match="not a readable zip"):
        load_model(tmp_path / "truncated.zip")
    with zipfile.ZipFile(tmp_path / "norf.zip", "w") as z:
        z.writestr("weights.pt", b"x")
    with pytest.raises(ModelFileError, match="no rdf.yaml"):
        load_model(tmp_path / "norf.zip")
    bad = _rewrite(packages["nuclei"], tmp_path / "badfile.zip", replace={"nuclei.safetensors": b"garbage"})
    with pytest.raises(ModelFileError, match="corrupt"):
        load_model(bad)


# ---------------------------------------------------------------------------- foreign packages
class _OtherNet(nn.Module):
    """Not a U-Net of ours: two scales, one sigmoid channel, channel-last input (b, y, x, c)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 6, 3, padding=1)
        self.b = nn.Conv2d(6, 6, 3, padding=1)
        self.head = nn.Conv2d(6, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2)
        a = F.relu(self.a(x))
        b = F.relu(self.b(F.avg_pool2d(a, 2)))
        return self.head(a + F.interpolate(b, scale_factor=2.0, mode="nearest"))


def _foreign_package(tmp: Path, *, preprocessing="scale_range", halo=8, three_d=False,
                     state_dict_only=False, weights="torchscript") -> Path:
    from bioimageio.spec import save_bioimageio_package
    from bioimageio.spec.model import v0_5 as v

    torch.manual_seed(3)
    net = _OtherNet().eval()
    tmp.mkdir(parents=True, exist_ok=True)
    size = 64
    x = np.random.default_rng(0).uniform(0, 200, (1, size, size, 1)).astype(np.float32)
    with torch.no_grad():
        y = torch.sigmoid(net(torch.from_numpy((x - x.min()) / (x.max() - x.min())))).numpy()
    space = ["y", "x"]
    if three_d:
        x, y, space = x[:, None], y[:, :, None], ["z", "y", "x"]
    np.save(tmp / "in.npy", x)
    np.save(tmp / "out.npy", y)
    torch.jit.save(torch.jit.script(net), str(tmp / "net.pt"))
    pre = {"scale_range": v.ScaleRangeDescr(kwargs=v.ScaleRangeKwargs(axes=[v.AxisId(a) for a in space],
                                                                        min_percentile=1.0, max_percentile=99.8)),
           "zero_mean_unit_variance": v.ZeroMeanUnitVarianceDescr()}[preprocessing]
    in_axes = [v.BatchAxis(), *[v.SpaceInputAxis(id=v.AxisId(a), size=v.ParameterizedSize(min=32, step=8))
                                for a in space], v.ChannelAxis(channel_names=["raw"])]
    if three_d:
        in_axes[1] = v.SpaceInputAxis(id=v.AxisId("z"), size=1)

    def out_axis(a):
        ref = v.SizeReference(tensor_id=v.TensorId("raw"), axis_id=v.AxisId(a))
        return v.SpaceOutputAxisWithHalo(id=v.AxisId(a), size=ref, halo=halo) if halo and a != "z" \
            else v.SpaceOutputAxis(id=v.AxisId(a), size=ref)

    out_axes = [v.BatchAxis(), v.ChannelAxis(channel_names=["cell"]), *[out_axis(a) for a in space]]
    if state_dict_only:
        (tmp / "arch.py").write_text("import torch\nclass Net(torch.nn.Module):\n    pass\n")
        torch.save(net.state_dict(), tmp / "w.pt")
        weights = v.WeightsDescr(pytorch_state_dict=v.PytorchStateDictWeightsDescr(
            source=tmp / "w.pt", pytorch_version=v.Version("2.0"),
            architecture=v.ArchitectureFromFileDescr(source=tmp / "arch.py", callable=v.Identifier("Net"))))
    elif weights == "onnx":
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(net, (torch.zeros(1, 64, 64, 1),), str(tmp / "net.onnx"), dynamo=False,
                              input_names=["raw"], output_names=["mask"], opset_version=17,
                              dynamic_axes={"raw": {0: "b", 1: "y", 2: "x"}, "mask": {0: "b", 2: "y", 3: "x"}})
        weights = v.WeightsDescr(onnx=v.OnnxWeightsDescr(source=tmp / "net.onnx", opset_version=17))
    else:
        weights = v.WeightsDescr(torchscript=v.TorchscriptWeightsDescr(source=tmp / "net.pt",
                                                                       pytorch_version=v.Version("2.0")))
    (tmp / "README.md").write_text("# A small two-scale network\n")
    descr = v.ModelDescr(
        name="other lab cells", description="a foreign-style 2D segmentation network",
        authors=[v.Author(name="Another Lab")], cite=[v.CiteEntry(text="none", doi=v.Doi("10.1000/xyz"))],
        license=v.LicenseId("MIT"), documentation=v.FileDescr(source=tmp / "README.md"),
        inputs=[v.InputTensorDescr(id=v.TensorId("raw"), axes=in_axes, preprocessing=[pre],
                                   test_tensor=v.FileDescr(source=tmp / "in.npy"))],
        outputs=[v.OutputTensorDescr(id=v.TensorId("mask"), axes=out_axes, postprocessing=[v.SigmoidDescr()],
                                     test_tensor=v.FileDescr(source=tmp / "out.npy"))],
        weights=weights)
    return save_bioimageio_package(descr, output_path=tmp / "package.zip")


@pytest.mark.parametrize("weights", ["torchscript", "onnx"])
def test_foreign_package_runs_through_our_tiler(tmp_path, nuclei_image, weights):
    if weights == "onnx":
        pytest.importorskip("onnxruntime")
    from napari_unet.core.exchange.runtime import ExternalNet
    from napari_unet.core.modelfile.normalization import Normalization
    from napari_unet.core.predict.predict2d import predict_image
    from napari_unet.core.segment import segment_image

    model = load_model(_foreign_package(tmp_path / "foreign", weights=weights))
    # the package has no clip step: its normalisation is used as it says, unclipped
    assert isinstance(model.net, ExternalNet) and model.normalization == Normalization(
        "percentile", 1.0, 99.8, clip=False)
    img = nuclei_image[100:300, 50:230]
    probs = predict_image(img, model, device="cpu", tile_size=64)  # many small tiles
    # the network on the whole mirror-padded image, normalised as the package says
    norm = Normalization("percentile", 1.0, 99.8, clip=False)
    x = norm.apply(img[None], norm.stats(img))[0]
    xp = np.pad(x, 8, mode="reflect")[None, :, :, None]
    torch.manual_seed(3)
    net = _OtherNet().eval()
    with torch.no_grad():
        p = torch.sigmoid(net(torch.from_numpy(np.ascontiguousarray(xp)))).numpy()[0, 0, 8:-8, 8:-8]
    assert np.abs(probs[1] - p).max() <= 1e-5
    assert segment_image(img, model, device="cpu", tile_size=64).max() > 3
    # a network from elsewhere is segmented with, not exported or fine-tuned as ours
    from napari_unet.cli.main import main

    assert main(["export", str(tmp_path / "foreign" / "package.zip"), "--format", "torchscript",
                 "-o", str(tmp_path / "again.pt")]) == 2


@pytest.mark.parametrize("kwargs, says", [
    ({"three_d": True}, "3D"),
    ({"preprocessing": "zero_mean_unit_variance"}, "zero_mean_unit_variance"),
    ({"halo": 0}, "no halo"),
])
def test_what_we_cannot_run_is_refused_by_name(tmp_path, kwargs, says):
    pkg = _foreign_package(tmp_path / "p", **kwargs)
    with pytest.raises(ModelFileError, match=says):
        load_model(pkg)


def test_foreign_state_dict_is_never_unpickled(tmp_path, monkeypatch):
    pkg = _foreign_package(tmp_path / "sd", state_dict_only=True)

    def no_unpickling(*a, **k):
        raise AssertionError("torch.load called on a foreign state dict")

    monkeypatch.setattr(torch, "load", no_unpickling)
    with pytest.raises(ModelFileError, match="pytorch_state_dict"):
        load_model(pkg)


def test_invalid_foreign_descriptions_name_the_problem(tmp_path):
    pkg = _foreign_package(tmp_path / "f")

    def no_inputs(rdf):
        del rdf["inputs"]

    with pytest.raises(ModelFileError, match="not a valid bioimage.io model package: inputs"):
        load_model(_rewrite(pkg, tmp_path / "noinputs.zip", no_inputs))
    # weights that are not the file rdf.yaml describes (its sha256 differs)
    with pytest.raises(ModelFileError, match="not a valid bioimage.io model package: weights.torchscript.*SHA256 mismatch"):
        load_model(_rewrite(pkg, tmp_path / "tampered.zip", replace={"net.pt": b"tampered"}))
