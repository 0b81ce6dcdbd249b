"""The public API: ``from napari_unet import ...`` is lazy (no torch on import), every exported name
is the object its defining module holds, the README's Python example runs as written, and the old
``napari_unet.core.io`` import path still works for one release with a DeprecationWarning."""

import importlib
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import napari_unet

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "src" / "napari_unet" / "_sample_data" / "nuclei_dsb2018.tif"
HANG = 600  # s: a hung subprocess ends the test; nothing here asserts how fast anything is

# public name -> the module that defines it (written out here, not read from the package, so that
# a name moved or dropped by mistake fails this test)
DEFINED_IN = {
    "load_model": "napari_unet.core.exchange.opening",
    "save_model": "napari_unet.core.modelfile.files",
    "shipped_models": "napari_unet.core.modelfile.files",
    "UNetModel": "napari_unet.core.modelfile.files",
    "UNetConfig": "napari_unet.core.network.unet",
    "UNet": "napari_unet.core.network.unet",
    "segment": "napari_unet.core.segment",
    "segment_image": "napari_unet.core.segment",
    "predict_image": "napari_unet.core.predict.predict2d",
    "train": "napari_unet.core.train.members",
    "TrainConfig": "napari_unet.core.train.config",
    "fine_tune_volume": "napari_unet.core.train.loop3d",
    "evaluate": "napari_unet.core.metrics",
    "segment_files": "napari_unet.batch.files",
    "segment_arrays": "napari_unet.batch.arrays",
    "segment_to_zarr": "napari_unet.batch.zarr_blocks",
    "export_bioimageio": "napari_unet.core.exchange.bioimageio",
    "export_onnx": "napari_unet.core.exchange.portable",
    "export_torchscript": "napari_unet.core.exchange.portable",
}

OLD_IO_NAMES = {"load_model", "save_model", "UNetModel", "Postprocessing", "ModelFileError",
                "read_header", "shipped_models"}


def _python(code: str, *flags: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *flags, "-c", code], capture_output=True, text=True,
                          timeout=HANG, cwd=cwd)


# ------------------------------------------------------------------ the package import is light
def test_importing_the_package_imports_no_torch():
    """napari imports the package to build its Plugins menu: that must stay light (no torch, no
    napari_unet.core)."""
    r = _python("import sys, napari_unet\n"
                "heavy = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')\n"
                "               or m.startswith('napari_unet.core') or m.startswith('napari_unet.batch'))\n"
                "print(heavy)\n"
                "print(napari_unet.__version__)")
    assert r.returncode == 0, r.stderr[-3000:]
    heavy, version = r.stdout.splitlines()
    assert heavy == "[]", heavy
    assert version == napari_unet.__version__


def test_the_version_is_the_installed_distributions():
    from importlib.metadata import version

    assert napari_unet.__version__ == version("napari-unet")


# ------------------------------------------------------------------ every name is the real object
def test_all_lists_exactly_the_public_api():
    assert len(napari_unet.__all__) == len(set(napari_unet.__all__))
    assert set(napari_unet.__all__) == set(DEFINED_IN) | {"__version__"}


@pytest.mark.parametrize("name", sorted(DEFINED_IN))
def test_every_public_name_is_the_object_of_its_defining_module(name):
    obj = getattr(napari_unet, name)
    assert obj.__module__ == DEFINED_IN[name]
    assert obj is getattr(importlib.import_module(DEFINED_IN[name]), name)
    assert callable(obj)


def test_from_import_and_dir_see_the_lazy_names():
    from napari_unet import TrainConfig, load_model, segment_image  # noqa: F401

    assert set(napari_unet.__all__) <= set(dir(napari_unet))


def test_an_unknown_name_raises_attribute_error_naming_it():
    with pytest.raises(AttributeError, match="no attribute 'segment_imgae'"):
        napari_unet.segment_imgae  # noqa: B018
    with pytest.raises(ImportError, match="segment_imgae"):
        from napari_unet import segment_imgae  # noqa: F401
    assert not hasattr(napari_unet, "_not_there")


# ------------------------------------------------------------------ the README's Python example
def _readme_python() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)
    assert len(blocks) == 1, f"README.md has {len(blocks)} ```python blocks, expected one"
    return blocks[0]


def test_the_readme_python_example_uses_the_public_api():
    code = _readme_python()
    assert "from napari_unet import load_model, segment_image" in code
    assert "napari_unet.core" not in code  # users import from the package, not its insides


def test_the_readme_python_example_runs_as_written(tmp_path):
    """The block as it stands, in a fresh interpreter in a temporary folder holding an
    ``image.tif`` (the shipped nuclei sample); lines appended after it check what it made."""
    shutil.copy(SAMPLE, tmp_path / "image.tif")
    check = ("\nimport numpy as np\n"
             "assert labels.shape == (512, 512) and np.issubdtype(labels.dtype, np.integer)\n"
             "print(len(np.unique(labels)) - 1)\n")
    r = _python(_readme_python() + check, cwd=tmp_path)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert int(r.stdout.split()[-1]) >= 10  # a real nuclei image: many nuclei found


# ------------------------------------------------------------------ the old import path
def _fresh_import_of_the_old_module():
    sys.modules.pop("napari_unet.core.io", None)
    core = importlib.import_module("napari_unet.core")
    if "io" in vars(core):
        delattr(core, "io")
    return importlib.import_module("napari_unet.core.io")


def test_the_old_import_path_warns_and_names_the_new_one():
    with pytest.warns(DeprecationWarning, match=r"from napari_unet import load_model") as record:
        old = _fresh_import_of_the_old_module()
    [w] = [w for w in record if issubclass(w.category, DeprecationWarning)]
    assert "napari_unet.core.io is deprecated" in str(w.message)
    assert set(old.__all__) == OLD_IO_NAMES
    files = importlib.import_module("napari_unet.core.modelfile.files")
    opening = importlib.import_module("napari_unet.core.exchange.opening")
    for name in OLD_IO_NAMES:
        home = opening if name == "load_model" else files  # load_model opens packages too, as before
        assert getattr(old, name) is getattr(home, name), name
    public = {n for n in vars(old) if not n.startswith("_")} - {"annotations", "warnings"}
    assert public == OLD_IO_NAMES  # only what the old module offered publicly


def test_the_old_import_path_still_loads_a_model():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old = _fresh_import_of_the_old_module()
    model = old.load_model("nuclei")
    assert isinstance(model, old.UNetModel)


def test_the_deprecation_warning_points_at_the_users_import(tmp_path):
    """With warnings as errors the old import fails, and the warning names the user's file and
    line (stacklevel), not a line inside napari-unet or importlib."""
    script = tmp_path / "user_script.py"
    script.write_text("import warnings\n"
                      "with warnings.catch_warnings(record=True) as w:\n"
                      "    warnings.simplefilter('always')\n"
                      "    from napari_unet.core.io import load_model\n"
                      "print(w[0].filename, w[0].lineno, w[0].category.__name__)\n")
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=HANG)
    assert r.returncode == 0, r.stderr[-3000:]
    filename, lineno, category = r.stdout.split()
    assert (Path(filename), int(lineno), category) == (script, 4, "DeprecationWarning")

    r = _python("from napari_unet.core.io import load_model", "-W", "error::DeprecationWarning")
    assert r.returncode != 0
    assert "DeprecationWarning" in r.stderr and "from napari_unet import load_model" in r.stderr
