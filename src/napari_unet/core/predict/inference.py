"""What 2D and 3D prediction share: the padding modes and outputs they accept, and the private
copy of the network they run (:func:`inference_net`)."""

from __future__ import annotations

import copy

import torch

from napari_unet.core.modelfile.files import UNetModel
from napari_unet.core.network.unet import UNet

PADDING_MODES = ("mirror", "zero")
OUTPUTS = ("probabilities", "semantic")


def inference_net(model: UNetModel | UNet, device: torch.device) -> UNet:
    """A private eval-mode copy of the network on ``device``, in the memory layout convolutions run
    fastest in (channels-last, but on Apple's MPS). The caller's model keeps its device, mode and
    memory layout; load it once and reuse it for every tile or block.

    Parameters
    ----------
    model : UNetModel or UNet
        The model, or a bare network (anything with a ``config``, e.g. an external network).
    device : torch.device
        Where the copy lives.

    Returns
    -------
    UNet
        The copy, in eval mode.
    """
    net = model.net if isinstance(model, UNetModel) else model
    net = copy.deepcopy(net).to(device).eval()
    if device.type != "mps":
        three_d = getattr(getattr(net, "config", None), "dims", 2) == 3
        net = net.to(memory_format=torch.channels_last_3d if three_d else torch.channels_last)
    return net
