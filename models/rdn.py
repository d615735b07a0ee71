"""RDN: Residual Dense Network for Image Super-Resolution (CVPR 2018).

Zhang et al.'s network: two 3x3 shallow convs (sfe1, sfe2) -> `num_blocks` residual dense blocks
(each: `num_layers` densely connected 3x3 conv+ReLU layers adding `channel_growth` channels, a 1x1
local fusion back to `mid_channels` and a local skip) -> global fusion of all block outputs (1x1 then
3x3) + skip from sfe1 -> PixelShuffle upsampler -> 3x3 conv to 1 channel.

Reproduces upstream GrokLST `groklst/models/editors/rdn/rdn_net.py::RDN` (the MMagic RDN with
in/out_channels=1, mid_channels=64, num_blocks=16, num_layers=8, channel_growth=64).
Upsampler exactly as upstream: x2 -> one (conv 64->256, PixelShuffle(2)); x4 -> two of them
(upstream loops `scale // 2` times); x8 -> a single conv 64->64*64 + PixelShuffle(8).
Parameters: x2 22,121,089 / x4 22,268,801 / x8 24,336,769. state_dict keys match upstream
(sfe1, sfe2, rdbs.i.layers.j.conv, rdbs.i.lff, gff, upscale, output); outputs were compared with
upstream on shared weights (identical). Input size: any h, w.
"""
import torch
import torch.nn as nn

# GrokLST downscales a single LST band. A constant, not a model argument: every layer that reads
# or writes the LST is built for one channel, so checkpoints always have the upstream shapes.
LST_CHANNELS = 1


class DenseLayer(nn.Module):
    """(B, C, h, w) -> (B, C + growth, h, w): concat input with relu(conv3x3(input))."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return torch.cat([x, self.relu(self.conv(x))], 1)


class RDB(nn.Module):
    """Residual dense block: x + lff(dense_layers(x)), C -> C."""

    def __init__(self, in_channels, channel_growth, num_layers):
        super().__init__()
        self.layers = nn.Sequential(*[DenseLayer(in_channels + channel_growth * i, channel_growth)
                                      for i in range(num_layers)])
        self.lff = nn.Conv2d(in_channels + channel_growth * num_layers, in_channels, 1)

    def forward(self, x):
        return x + self.lff(self.layers(x))


class RDN(nn.Module):
    """RDN for 1-channel LST (the LST channel counts `in_channels` / `out_channels` are fixed to 1).

    Args (each is the config key `model.<arg>`, except scale, which is derived from data.scale):
        scale: upsampling factor, 2, 4 or 8 (x2 / x4: one or two conv + PixelShuffle(2) steps; x8: one
            conv + PixelShuffle(8), as upstream).
        mid_channels: channel width of the shallow convs and between the dense blocks (64).
        num_blocks: number of residual dense blocks (16).
        num_layers: densely connected conv layers per block (8).
        channel_growth: channels each dense layer adds (64).
    """

    kind = "sisr"
    scales = (2, 4, 8, 16, 32)
    lr_multiple = 1
    unused_parameters = ()

    def __init__(self, scale: int = 8, mid_channels=64, num_blocks=16, num_layers=8, channel_growth=64):
        super().__init__()
        c = mid_channels
        self.sfe1 = nn.Conv2d(LST_CHANNELS, c, 3, padding=1)
        self.sfe2 = nn.Conv2d(c, c, 3, padding=1)
        self.rdbs = nn.ModuleList([RDB(c, channel_growth, num_layers) for _ in range(num_blocks)])
        self.gff = nn.Sequential(nn.Conv2d(c * num_blocks, c, 1), nn.Conv2d(c, c, 3, padding=1))
        if scale in (2, 4):  # upstream: scale // 2 stages of x2 (one for x2, two for x4)
            layers = []
            for _ in range(scale // 2):
                layers += [nn.Conv2d(c, c * 4, 3, padding=1), nn.PixelShuffle(2)]
            self.upscale = nn.Sequential(*layers)
        else:  # one sub-pixel step of the full factor
            self.upscale = nn.Sequential(nn.Conv2d(c, c * scale ** 2, 3, padding=1), nn.PixelShuffle(scale))
        self.output = nn.Conv2d(c, LST_CHANNELS, 3, padding=1)

    def forward(self, lr_lst, hr_guidance=None):
        """lr_lst (B, 1, h, w) normalised LST; hr_guidance is ignored (SISR; None is fine)
        -> (B, 1, h*scale, w*scale) normalised LST."""
        sfe1 = self.sfe1(lr_lst)
        x = self.sfe2(sfe1)
        feats = []
        for rdb in self.rdbs:
            x = rdb(x)
            feats.append(x)
        x = self.gff(torch.cat(feats, 1)) + sfe1
        return self.output(self.upscale(x))
