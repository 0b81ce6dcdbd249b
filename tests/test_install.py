"""What the README's set-up gives a user, checked in the environment the tests run in (CI builds it
fresh from the README's commands: .ci/run): a Qt binding, napari starting with the plugin's
widgets, the console script, the bioimage.io export; and the settings CI forces (the fp32 path).

napari is started in a subprocess, as a user starts it: without the test's QT_API, and in a
process of its own, so that the answer does not depend on what this test session imported."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's scripts (napari-unet) next to its python
HANG = 600  # s: a hung subprocess ends the test; no test here asserts how fast anything is


def _pyproject() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def _readme_commands() -> list[str]:
    """The command lines of the README's first ```bash block (comments and blank lines left out)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"^```bash\n(.*?)^```", text, re.S | re.M)
    assert block, "README.md has no ```bash block"
    return [ln.strip() for ln in block.group(1).splitlines()
            if ln.strip() and not ln.strip().startswith("#")]


def _user_env() -> dict[str, str]:
    """The test's environment without the settings a user does not have (QT_API picks the binding
    for the tests; a user's napari finds it alone)."""
    env = {k: v for k, v in os.environ.items() if k not in ("QT_API", "PYTEST_CURRENT_TEST")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def _run(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=HANG, env=_user_env(), **kw)


# ------------------------------------------------------------------ the README and pyproject agree
def test_the_readme_install_command_brings_the_gui_extra():
    """Command 1 installs the package with the gui extra (napari with a Qt binding), and the gui
    extra is what brings the binding; the testing extra includes it, so the tests run where a
    user's napari would."""
    install = _readme_commands()[0]
    m = re.search(r'pip install .*-e\s+"?\.\[([\w,\s-]+)\]"?', install)
    assert m, f"README command 1 installs no extras of the package: {install!r}"
    assert "gui" in [e.strip() for e in m.group(1).split(",")], install
    assert "napari-unet segment" in install  # and then segments, as the README says
    extras = _pyproject()["optional-dependencies"]
    assert any(re.match(r"napari\[.*pyqt6.*\]", r) for r in extras["gui"]), extras["gui"]
    assert "napari-unet[gui]" in extras["testing"]
    assert _readme_commands()[1] == "bash scripts/test.sh"  # command 2: what CI runs (.ci/run)


def test_the_supported_napari_versions_are_declared_and_this_one_is_among_them():
    from importlib.metadata import version

    from packaging.requirements import Requirement

    deps = _pyproject()["dependencies"]
    napari = [Requirement(d) for d in deps if Requirement(d).name == "napari"]
    assert len(napari) == 1
    ops = {s.operator for s in napari[0].specifier}
    assert ops == {">=", "<"}, f"a minimum and a maximum: {napari[0]}"
    assert napari[0].specifier.contains(version("napari")), (version("napari"), str(napari[0]))
    # CI tests the minimum: .ci/run reads it from pyproject.toml, tox.ini names it
    low = next(s.version for s in napari[0].specifier if s.operator == ">=")
    tox = (ROOT / "tox.ini").read_text()
    assert f"napari=={low}\n" in tox and f"NAPARI_MIN = {low}\n" in tox, low


# ------------------------------------------------------------------ the environment the tests run in
def test_a_qt_binding_is_importable_through_qtpy():
    """What napari needs first: without a binding it fails with "No Qt bindings could be found"."""
    r = _run([sys.executable, "-c", "import qtpy; print(qtpy.API_NAME, qtpy.QT_VERSION)"])
    assert r.returncode == 0, r.stderr[-3000:]
    api, qt = r.stdout.split()[-2:]
    assert api in ("PyQt6", "PyQt5", "PySide6", "PySide2") and qt[0].isdigit(), r.stdout


@pytest.mark.skipif(sys.platform.startswith("linux") and not os.environ.get("DISPLAY"),
                    reason="napari needs a display: run under xvfb-run (scripts/test.sh does)")
def test_napari_starts_with_the_plugins_widgets():
    """A viewer opens and closes, and the plugin's Segment widget docks in it, in a process of
    its own (what `napari` does for a user after the README's set-up)."""
    code = (
        "import napari, qtpy\n"
        "v = napari.Viewer(show=False)\n"
        "_dock, w = v.window.add_plugin_dock_widget('napari-unet', 'Segment')\n"
        "print('napari', napari.__version__, qtpy.API_NAME, type(w).__name__)\n"
        "v.close()\n"
    )
    r = _run([sys.executable, "-c", code])
    assert r.returncode == 0, r.stderr[-3000:]
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("napari ")]
    assert line, r.stdout
    from importlib.metadata import version

    assert line[-1].split()[1] == version("napari")


def test_the_readme_segment_command_works(tmp_path):
    """README command 1's second half, the console script as a user types it, into a temporary
    folder: a TIFF of instances with objects in it."""
    import tifffile

    segment = _readme_commands()[0].split("&&", 1)[1].split()
    assert segment[:2] == ["napari-unet", "segment"]
    out = tmp_path / "instances.tif"
    i = segment.index("--output")
    segment[i + 1] = str(out)
    r = _run([str(BIN / "napari-unet"), *segment[1:]], cwd=ROOT)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    labels = tifffile.imread(out)
    image = tifffile.imread(ROOT / segment[2])
    assert labels.shape == image.shape and np.issubdtype(labels.dtype, np.integer)
    assert len(np.unique(labels)) - 1 >= 10  # a real nuclei image: many nuclei found


def test_the_export_extra_writes_a_bioimageio_package(tmp_path):
    """The export extra as a fresh install resolves it: bioimageio.spec 0.5.12 with pydantic 2.14
    ended in a pydantic serializer traceback (pyproject pins pydantic < 2.14 while it is so)."""
    pytest.importorskip("bioimageio.spec")
    pytest.importorskip("onnx")
    out = tmp_path / "nuclei.zip"
    r = _run([str(BIN / "napari-unet"), "export", "nuclei", "--format", "bioimageio",
              "--output", str(out), "--quiet"], cwd=tmp_path)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    import zipfile

    names = zipfile.ZipFile(out).namelist()
    assert "rdf.yaml" in names and any(n.endswith(".onnx") for n in names), names


# ------------------------------------------------------------------ the settings CI forces
def test_the_fp32_path_can_be_forced_by_the_environment(monkeypatch):
    """NAPARI_UNET_PRECISION=fp32 makes precision="auto" fp32 (how CI checks a CPU without
    AVX512-BF16), leaves an explicit choice alone, and refuses a value it does not know."""
    from napari_unet.core.train import TrainConfig

    monkeypatch.setenv("NAPARI_UNET_PRECISION", "fp32")
    assert TrainConfig().precision == "fp32"
    assert TrainConfig(precision="bf16").precision == "bf16"
    monkeypatch.setenv("NAPARI_UNET_PRECISION", "fp16")
    with pytest.raises(ValueError, match="NAPARI_UNET_PRECISION"):
        TrainConfig()
    monkeypatch.setenv("NAPARI_UNET_PRECISION", "")
    assert TrainConfig().precision == "auto"
    monkeypatch.delenv("NAPARI_UNET_PRECISION")
    assert TrainConfig().precision == "auto"


def test_a_training_under_the_forced_fp32_path_records_it(monkeypatch):
    from helpers import tiny_model

    from napari_unet.core.train import TrainConfig, train_model

    monkeypatch.setenv("NAPARI_UNET_PRECISION", "fp32")
    base = tiny_model()
    img = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    lab = np.zeros((64, 64), np.int32)
    lab[10:30, 10:30] = 1
    cfg = TrainConfig(steps=1, batch_size=1, patch_size=32, val_fraction=0.0)
    model = train_model(img, lab, model=base, config=cfg, device="cpu", seed=0)
    assert model.provenance["training"]["precision"] == "fp32"
