"""PixTransform: Guided Super-Resolution as Pixel-to-Pixel Transformation (ICCV 2019).

A per-pixel network: the bicubically upsampled LST and the guidance bands are each lifted by two convs
(1x1 -> 32, ReLU, kxk -> 2048) into a shared 2048-d space, summed, and a head (ReLU, kxk -> 32, ReLU,
1x1 -> 1) maps every pixel to the HR LST. With the upstream kernel_size=1 it is a pure pixel-wise MLP.
(The paper fits one such network per image; GrokLST, and this port, train it as an ordinary feed-forward
model.)

Reproduces upstream `groklst/models/editors/p2p` (class PixTransformNet, kernel_size=1). 201,185 parameters
at every scale. state_dict keys match upstream (`spatial_net.*`, `color_net.*`, `head_net.*`); outputs were
compared with upstream on the same weights (identical). No upstream bug was found.
`weights_regularizer` = per-branch weight decays (spatial, color, head), default (1e-4, 1e-3, 1e-4) as
upstream; they are only exposed through `param_groups()` for an optimiser (upstream's training recipe, like
ours, does not use them). Input size: any h, w.
"""
import torch.nn as nn
import torch.nn.functional as F

# GrokLST downscales a single LST band. A constant, not a model argument: every layer that reads
# or writes the LST is built for one channel, so checkpoints always have the upstream shapes.
LST_CHANNELS = 1


class PixTransformNet(nn.Module):
    """PixTransform (upstream p2p/PixTransformNet; the LST channel count `dep_in_channels` is fixed to 1).

    Args (each is the config key `model.<arg>`, except scale and guidance_channels, which are
    derived from data.scale and len(data.guidance_bands)):
        scale: upsampling factor, 2, 4 or 8 (only sets the bicubic pre-upsampling: the net is per HR pixel).
        guidance_channels: number of guidance bands C (10 in GrokLST).
        kernel_size: side of the 32 <-> 2048 convs (1: a pixel-wise MLP, as upstream; odd).
        weights_regularizer: weight decays of the (spatial, color, head) branches for param_groups()
            (None: (1e-4, 1e-3, 1e-4)); not used by train.py.
    """
    kind = "gisr"
    scales = (2, 4, 8, 16, 32)
    lr_multiple = 1
    unused_parameters = ()

    def __init__(self, scale: int = 8, guidance_channels: int = 10, kernel_size: int = 1, weights_regularizer=None):
        super().__init__()
        self.scale = scale
        k, p = kernel_size, (kernel_size - 1) // 2
        self.spatial_net = nn.Sequential(nn.Conv2d(LST_CHANNELS, 32, 1), nn.ReLU(), nn.Conv2d(32, 2048, k, padding=p))
        self.color_net = nn.Sequential(nn.Conv2d(guidance_channels, 32, 1), nn.ReLU(), nn.Conv2d(32, 2048, k, padding=p))
        self.head_net = nn.Sequential(nn.ReLU(), nn.Conv2d(2048, 32, k, padding=p), nn.ReLU(), nn.Conv2d(32, 1, 1))
        self.weights_regularizer = tuple(weights_regularizer or (1e-4, 1e-3, 1e-4))

    def param_groups(self):
        """Optimiser parameter groups with the per-branch weight decays of the paper."""
        nets = (self.spatial_net, self.color_net, self.head_net)
        return [{"params": list(n.parameters()), "weight_decay": wd} for n, wd in zip(nets, self.weights_regularizer)]

    def forward(self, lr_lst, hr_guidance=None):
        """lr_lst (B, 1, h, w) normalised LST, hr_guidance (B, C, h*scale, w*scale) normalised guidance
        (C = guidance_channels) -> (B, 1, h*scale, w*scale) normalised LST."""
        up = F.interpolate(lr_lst, scale_factor=self.scale, mode="bicubic", align_corners=False)
        return self.head_net(self.spatial_net(up) + self.color_net(hr_guidance))
