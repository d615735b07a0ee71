"""SAFMN: Spatially-Adaptive Feature Modulation for Efficient Image Super-Resolution (ICCV 2023).

A light single-image SR network (Sun et al.). A 3x3 stem feeds a Global Response Normalisation,
then a stack of blocks that each apply SAFM (channel chunks processed at 1, 1/4, 1/8, 1/16 spatial
resolution by max-pool + depthwise conv, fused and used as a GELU gate) and a conv channel mixer.
A 3x3 conv + PixelShuffle head is added to a bilinear upsampling of the input.

Reproduces upstream GrokLST `groklst/models/editors/safmn/safmn.py::SAFMN` (dim=36, n_blocks=8,
ffn_scale=2.0). Parameters: x2 222,052 / x4 225,952 / x8 241,552. state_dict keys match upstream;
outputs were compared with upstream on shared weights (identical for inputs of side >= 16).

Input size: any h, w. Upstream pools the coarsest chunk to (h // 16, w // 16), which is zero for
sides < 16 and crashes; here each pooled side is clamped to at least 1. This changes nothing for
sides >= 16 (no parameters involved) and makes tiny inputs work.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

# GrokLST downscales a single LST band. A constant, not a model argument: every layer that reads
# or writes the LST is built for one channel, so checkpoints always have the upstream shapes.
LST_CHANNELS = 1


class GRN(nn.Module):
    """Global Response Normalisation (ConvNeXt-V2): x + gamma * (x * N(x)) + beta, N = L2 over H, W."""

    def __init__(self, dim):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, dim, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, dim, 1, 1))

    def forward(self, x):
        gx = torch.norm(x, p=2, dim=(2, 3), keepdim=True)
        nx = gx / (gx.mean(dim=1, keepdim=True) + 1e-6)
        return self.gamma * (x * nx) + self.beta + x


class CCM(nn.Module):
    """Convolutional channel mixer: 3x3 conv (dim -> dim*growth), GELU, 1x1 back to dim."""

    def __init__(self, dim, growth_rate=2.0):
        super().__init__()
        hidden = int(dim * growth_rate)
        self.ccm = nn.Sequential(nn.Conv2d(dim, hidden, 3, 1, 1, bias=False), nn.GELU(),
                                 nn.Conv2d(hidden, dim, 1, 1, 0, bias=False))

    def forward(self, x):
        return self.ccm(x)


class SAFM(nn.Module):
    """Spatially-adaptive feature modulation: chunk i (i>0) is max-pooled by 2**(i+1), filtered by a
    depthwise 3x3 and nearest-upsampled back; the fused map gates the input through GELU."""

    def __init__(self, dim, n_levels=4):
        super().__init__()
        self.n_levels = n_levels
        c = dim // n_levels
        self.mfr = nn.ModuleList([nn.Conv2d(c, c, 3, 1, 1, groups=c, bias=False) for _ in range(n_levels)])
        self.aggr = nn.Conv2d(dim, dim, 1, 1, 0, bias=False)
        self.act = nn.GELU()

    def forward(self, x):
        h, w = x.shape[-2:]
        out = []
        for i, xc in enumerate(x.chunk(self.n_levels, dim=1)):
            if i > 0:
                size = (max(1, h // 2 ** (i + 1)), max(1, w // 2 ** (i + 1)))
                s = self.mfr[i](F.adaptive_max_pool2d(xc, size))
                s = F.interpolate(s, size=(h, w), mode="nearest")
            else:
                s = self.mfr[i](xc)
            out.append(s)
        return self.act(self.aggr(torch.cat(out, dim=1))) * x


class AttBlock(nn.Module):
    def __init__(self, dim, ffn_scale=2.0):
        super().__init__()
        self.safm = SAFM(dim)
        self.ccm = CCM(dim, ffn_scale)

    def forward(self, x):
        x = self.safm(x) + x
        return self.ccm(x) + x


class SAFMN(nn.Module):
    """SAFMN for 1-channel LST (the LST channel count `lst_channels` is fixed to 1).

    Args (each is the config key `model.<arg>`, except scale, which is derived from data.scale):
        scale: upsampling factor, 2, 4 or 8 (one conv + PixelShuffle(scale) head).
        dim: channel width of the features (36; divisible by the 4 SAFM levels).
        n_blocks: number of SAFM + channel-mixer blocks (8).
        ffn_scale: hidden width of the conv channel mixer as a multiple of dim (2.0).
    """

    kind = "sisr"
    scales = (2, 4, 8, 16, 32)
    lr_multiple = 1
    unused_parameters = ()

    def __init__(self, scale: int = 8, dim=36, n_blocks=8, ffn_scale=2.0):
        super().__init__()
        self.scale = scale
        self.norm = GRN(dim)
        self.to_feat = nn.Conv2d(LST_CHANNELS, dim, 3, 1, 1)
        self.feats = nn.Sequential(*[AttBlock(dim, ffn_scale) for _ in range(n_blocks)])
        self.to_img = nn.Sequential(nn.Conv2d(dim, LST_CHANNELS * scale ** 2, 3, 1, 1), nn.PixelShuffle(scale))

    def forward(self, lr_lst, hr_guidance=None):
        """lr_lst (B, 1, h, w) normalised LST; hr_guidance is ignored (SISR; None is fine)
        -> (B, 1, h*scale, w*scale) normalised LST."""
        base = F.interpolate(lr_lst, scale_factor=self.scale, mode="bilinear", align_corners=False)
        x = self.feats(self.norm(self.to_feat(lr_lst)))
        return self.to_img(x) + base
