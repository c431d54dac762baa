"""Conv refinement head: 0-3 stacked 3x3, stride-1, C->C convolutions on the patch-token map.

No activation or normalisation between layers (as the authors). ``init="default"`` keeps PyTorch's init (what the
authors used; an untrained default head already changes the features, reported as ``pretrained_head_init``). ``init="identity"`` makes
every layer an exact identity at step 0, so an untrained model reproduces the pretrained features.
"""
from __future__ import annotations

import torch
from torch import nn

HEAD_INITS = ("default", "identity")


def identity_conv_(conv: nn.Conv2d) -> nn.Conv2d:
    """Zero weights except the centre tap = identity matrix; zero bias."""
    channels = conv.out_channels
    centre = conv.kernel_size[0] // 2
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[torch.arange(channels), torch.arange(channels), centre, centre] = 1.0
        if conv.bias is not None:
            conv.bias.zero_()
    return conv


class ConvHead(nn.Sequential):
    """``num_layers`` 3x3 convs C->C with padding 1 (zero layers: identity)."""

    def __init__(self, channels: int, num_layers: int = 1, init: str = "default"):
        if not 0 <= num_layers <= 8:
            raise ValueError(f"head.num_layers must be in 0..8 (paper ablates 0..3), got {num_layers}")
        if init not in HEAD_INITS:
            raise ValueError(f"head.init must be one of {HEAD_INITS}, got '{init}'")
        convs = [nn.Conv2d(channels, channels, kernel_size=3, stride=1, padding=1) for _ in range(num_layers)]
        if init == "identity":
            for conv in convs:
                identity_conv_(conv)
        super().__init__(*convs)
        self.channels, self.num_layers, self.init = channels, num_layers, init
