"""The network a training starts from: which classes it learns (:func:`resolve_mode`), one network
of a base ensemble (:func:`member_view`), its head widened to a border class when packed objects
need one (:func:`widen_head`), a 3D model refused for 2D training (:func:`refuse_3d`)."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import torch

from napari_unet.core.modelfile.files import UNetModel
from napari_unet.core.network.ensemble import members_of
from napari_unet.core.network.unet import UNet, UNetConfig
from napari_unet.core.train.annotations import check_mode
from napari_unet.core.train.data import choose_mode


def widened_config(cfg: UNetConfig) -> UNetConfig:
    """The architecture of :func:`widen_head`'s result: 3 classes, "boundary" in the middle."""
    names = cfg.class_names
    return replace(cfg, num_classes=3, class_names=(names[0], "boundary", names[1]))


def widen_head(net: UNet) -> UNet:
    """A 2-class (background / object) network as a 3-class background / boundary / interior one:
    same weights, the object class becomes the interior, and the new boundary class starts halfway
    between background and object (so it starts rare and is learnt, not guessed)."""
    cfg = net.config
    if cfg.num_classes != 2:
        raise ValueError(f"only a 2-class head can be widened, this one has {cfg.num_classes}")
    wide = UNet(widened_config(cfg))
    state = {k: v for k, v in net.state_dict().items() if not k.startswith("head.")}
    w, b = net.head.weight.detach(), net.head.bias.detach()
    state["head.weight"] = torch.stack([w[0], 0.5 * (w[0] + w[1]), w[1]])
    state["head.bias"] = torch.stack([b[0], 0.5 * (b[0] + b[1]) - math.log(2.0), b[1]])
    wide.load_state_dict(state)
    return wide


def resolve_mode(model: UNetModel | None, mode: str | None, labels: Any,
                  background_label: int | None) -> tuple[str, bool]:
    """(mode, widen): the target classes, and whether a 2-class base gets a boundary class."""
    k = None if model is None else model.config.num_classes
    if k is not None and k not in (2, 3):
        raise ValueError(f"cannot fine-tune a {k}-class model from painted instance labels: "
                         f"only 2-class (binary) and 3-class (boundary) models")
    if mode in (None, "auto"):
        if k == 3:
            return "boundary", False
        mode = choose_mode(labels, background_label)
    check_mode(mode)
    if k == 3 and mode == "binary":
        raise ValueError("mode 'binary' needs 2 classes but the model has 3 (background / boundary "
                         "/ interior): fine-tune it in mode 'boundary'")
    return mode, k == 2 and mode == "boundary"


def member_view(model: UNetModel, member: int) -> UNetModel:
    """One network of a base ensemble (network ``member`` modulo its size) as a model to fine-tune."""
    nets = members_of(model.net)
    if len(nets) == 1:
        return model
    return replace(model, net=nets[member % len(nets)])


def refuse_3d(model: Any) -> None:
    """A 3D model (3D U-Net) fine-tunes on painted z-slices of a volume, not on 2D paintings: say
    so instead of failing inside the network."""
    cfg = getattr(model, "config", model)
    if cfg is not None and getattr(cfg, "dims", 2) == 3:
        name = getattr(model, "name", None) or "this model"
        raise ValueError(f"'{name}' is a 3D model (3D U-Net): it fine-tunes on painted z-slices of "
                         f"a volume (Fine-tune widget: tick '3D U-Net'; command line: train "
                         f"--volume). For 2D painting choose a 2D base model, e.g. nuclei")
