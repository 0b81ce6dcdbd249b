"""The same block job on a dask.distributed LocalCluster of 2 processes equals one process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from helpers import drain, instances_model, is_relabelling

distributed = pytest.importorskip("distributed")
zarr = pytest.importorskip("zarr")

from napari_unet.batch import segment_to_zarr  # noqa: E402
from napari_unet.cli.main import main  # noqa: E402
from napari_unet.core.modelfile.files import Postprocessing, save_model  # noqa: E402
from napari_unet.core.segment import segment_image  # noqa: E402

DATA = Path(__file__).parent / "data"
TILE = 96


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as c:
        yield c


@pytest.fixture(scope="module")
def stack_file(tmp_path_factory) -> Path:
    """A real crop of the HeLa stack (frames 0-1, rows 300-460, columns 500-680), compressed as
    users' files are."""
    path = tmp_path_factory.mktemp("data") / "hela.tif"
    tifffile.imwrite(path, tifffile.imread(DATA / "hela-stack" / "t0-1_y300-460_x500-680_image.tif"),
                     compression="zlib")
    return path


def _loads(client) -> dict[str, list[str]]:
    return client.run(lambda: list(__import__("napari_unet.batch", fromlist=["x"]).MODEL_LOADS))


def test_distributed_equals_single_process(client, stack_file, tmp_path):
    model = instances_model(Postprocessing(instance_classes=(1,), grow_classes=(0,), min_size=5))
    image = tifffile.imread(stack_file)
    before = _loads(client)
    for output in ("semantic", "probabilities", "instances"):
        dest = drain(segment_to_zarr(stack_file, model, tmp_path / f"{output}.zarr", output_type=output,
                                     tile_size=TILE, block_size=56, client=client))
        got = zarr.open_array(store=str(dest), mode="r")[...]
        expected = segment_image(image, model, output=output, tile_size=TILE, device="cpu")
        if output == "semantic":
            assert np.array_equal(got, expected)
        elif output == "probabilities":
            np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
        else:
            assert expected.max() > 10
            assert all(is_relabelling(got[z], expected[z]) for z in range(len(image)))
    after = _loads(client)
    # both workers took blocks, and each prepared the network once per job (3 jobs), not per block
    new = {w: after[w][len(before[w]):] for w in after}
    assert all(len(tokens) >= 1 for tokens in new.values())
    assert all(len(set(tokens)) == len(tokens) for tokens in new.values())


def test_cli_scheduler_address(client, stack_file, tmp_path, capsys):
    model_path = save_model(instances_model(), tmp_path / "tiny")
    out = tmp_path / "out"
    args = ["segment", str(stack_file), "-o", str(out), "-m", str(model_path), "--output-type", "semantic",
            "--tile-size", str(TILE), "--chunk", "112", "--scheduler", client.scheduler.address, "-q"]
    assert main(args) == 0
    got = zarr.open_array(store=str(out / "hela_semantic.zarr"), mode="r")
    from napari_unet.core.predict.blocks import block_grid

    grid = block_grid(instances_model().config, got.shape[-2:], TILE, 112)
    assert got.chunks == (1,) + grid.block
    expected = segment_image(tifffile.imread(stack_file), instances_model(), output="semantic", tile_size=TILE,
                             device="cpu")
    assert np.array_equal(got[...], expected)
    assert main(args[:-1]) == 0  # resumed: nothing recomputed
    assert "0 done, 1 skipped" in capsys.readouterr().err


def test_distributed_needs_a_path(client, tmp_path):
    with pytest.raises(ValueError, match="path"):
        drain(segment_to_zarr(np.zeros((64, 64), np.uint8), instances_model(), tmp_path / "o.zarr", client=client))
