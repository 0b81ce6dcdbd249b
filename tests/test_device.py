"""CPU threads chosen for the machine and its load (core/device.py): no test reads the real load
or the real clock; the readings are injected."""

from __future__ import annotations

import pytest
import torch

from napari_unet.core.device import busy_cores, cpu_threads


@pytest.mark.parametrize("cores, busy, reserve, want", [
    (2, 0.0, 0, 2),    # a quiet 2-core machine: both cores
    (2, 0.3, 0, 2),    # a little noise is not a busy core
    (2, 2.0, 0, 1),    # two busy processes beside us: one thread, never zero
    (2, 1.0, 0, 1),
    (16, 4.2, 0, 12),  # a workstation with a job running
    (16, 0.0, 1, 15),  # a core left to the viewer
    (1, 5.0, 1, 1),
])
def test_cpu_threads_leave_the_busy_cores_to_their_processes(cores, busy, reserve, want):
    assert cpu_threads(cores, busy, reserve) == want


def _stat(busy_s: float, idle_s: float) -> str:
    """A /proc/stat first line with ``busy_s`` user seconds and ``idle_s`` idle seconds (100 Hz)."""
    return f"cpu  {int(busy_s * 100)} 0 0 {int(idle_s * 100)} 0 0 0 0 0 0\n"


def test_busy_cores_counts_the_other_processes_not_this_one():
    # over 1 s of a 2-core machine: 1.5 core-seconds busy, 0.5 of them ours -> others keep 1 core busy
    readings = iter([_stat(100.0, 500.0), _stat(101.5, 500.5)])
    own = iter([10.0, 10.5])
    b = busy_cores(1.0, read_stat=lambda: next(readings), own_seconds=lambda: next(own),
                   sleep=lambda s: None)
    assert b == pytest.approx(1.0)
    # all the busy time is ours: nobody else
    readings = iter([_stat(100.0, 500.0), _stat(101.0, 501.0)])
    own = iter([10.0, 11.0])
    assert busy_cores(1.0, read_stat=lambda: next(readings), own_seconds=lambda: next(own),
                      sleep=lambda s: None) == pytest.approx(0.0)


def test_busy_cores_says_nothing_busy_when_it_cannot_read():
    def unreadable():
        raise OSError("no /proc here")

    assert busy_cores(0.1, read_stat=unreadable, sleep=lambda s: None) == 0.0


def test_training_uses_the_threads_the_load_leaves_and_gives_them_back(colony, monkeypatch):
    """With other processes keeping every core but one busy, a CPU training runs on one thread,
    records it, and leaves torch's thread count as it found it."""
    from helpers import drain, tiny_model

    from napari_unet.core.train import TrainConfig, loop, train

    monkeypatch.setattr(loop, "usable_cores", lambda: 4)
    monkeypatch.setattr(loop, "busy_cores", lambda: 3.0)
    seen = []
    real_step = loop.sample_batch

    def counting(*a, **kw):
        seen.append(torch.get_num_threads())
        return real_step(*a, **kw)

    monkeypatch.setattr(loop, "sample_batch", counting)
    before = torch.get_num_threads()
    imgs, labs = colony
    cfg = TrainConfig(steps=2, batch_size=1, patch_size=32, val_min_total=0, val_min_objects=1,
                      precision="fp32", members=1)
    model = drain(train(imgs, labs, model=tiny_model(training_names=True), config=cfg, device="cpu",
                        seed=0))
    assert seen == [1, 1]
    assert model.provenance["cpu_threads"] == 1
    assert torch.get_num_threads() == before
