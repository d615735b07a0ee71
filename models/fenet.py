"""FeNet: Feature Enhancement Network for Lightweight Remote-Sensing Image Super-Resolution (IEEE TGRS 2022).

A lightweight remote-sensing SR CNN (Wang et al.). Two 3x3 convs extract features; four feature
enhancement blocks (FEB), each three lightweight lattice blocks (LLBlock: half the channels go through
three convs, the halves cross-gate each other with channel attention) merged by two attention-fuse
units; a back-fusion module (BFM) merges the four FEB outputs from deep to shallow; a conv + conv +
PixelShuffle head is added to a bicubic upsampling of the input.

Reproduces upstream GrokLST `groklst/models/editors/fenet/fenet.py::FeNet` (num_fea=48, num_LBs=4).
Parameters: x2 346,204 / x4 351,400 / x8 372,184. state_dict keys match upstream; outputs were
compared with upstream on shared weights (identical). The BFM is wired for exactly num_LBs=4.
Input size: any h, w.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

# GrokLST downscales a single LST band. A constant, not a model argument: every layer that reads
# or writes the LST is built for one channel, so checkpoints always have the upstream shapes.
LST_CHANNELS = 1


class CALayer(nn.Module):
    """Channel attention weights: avg-pool, 1x1 squeeze by 8, ReLU, 1x1, sigmoid -> (B, C, 1, 1)."""

    def __init__(self, num_fea):
        super().__init__()
        self.conv_du = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(num_fea, num_fea // 8, 1, 1, 0), nn.ReLU(inplace=True),
            nn.Conv2d(num_fea // 8, num_fea, 1, 1, 0), nn.Sigmoid())

    def forward(self, x):
        return self.conv_du(x)


class LLBlock(nn.Module):
    """Lightweight lattice block: split channels into halves a, b; a -> 3 convs; cross-gated fusion."""

    def __init__(self, num_fea):
        super().__init__()
        self.channel1 = num_fea // 2
        self.channel2 = num_fea - self.channel1
        c1 = self.channel1
        self.convblock = nn.Sequential(
            nn.Conv2d(c1, c1, 3, 1, 1), nn.LeakyReLU(0.05),
            nn.Conv2d(c1, c1, 3, 1, 1), nn.LeakyReLU(0.05),
            nn.Conv2d(c1, c1, 3, 1, 1))
        self.A_att_conv = CALayer(self.channel1)
        self.B_att_conv = CALayer(self.channel2)
        self.fuse1 = nn.Conv2d(num_fea, self.channel1, 1, 1, 0)
        self.fuse2 = nn.Conv2d(num_fea, self.channel2, 1, 1, 0)
        self.fuse = nn.Conv2d(num_fea, num_fea, 1, 1, 0)

    def forward(self, x):
        a, b = torch.split(x, [self.channel1, self.channel2], dim=1)
        a = self.convblock(a)
        p = torch.cat((b, self.A_att_conv(a) * a), dim=1)
        q = torch.cat((a, self.B_att_conv(b) * b), dim=1)
        return self.fuse(torch.cat((self.fuse1(p), self.fuse2(q)), dim=1))


class AF(nn.Module):
    """Attention fuse: channel-attend each input, concat, 1x1 conv back to num_fea."""

    def __init__(self, num_fea):
        super().__init__()
        self.CA1 = CALayer(num_fea)
        self.CA2 = CALayer(num_fea)
        self.fuse = nn.Conv2d(num_fea * 2, num_fea, 1)

    def forward(self, x1, x2):
        return self.fuse(torch.cat((self.CA1(x1) * x1, self.CA2(x2) * x2), dim=1))


class FEB(nn.Module):
    """Feature enhancement block: three chained LLBlocks, fused deep-to-shallow, plus a residual."""

    def __init__(self, num_fea):
        super().__init__()
        self.CB1 = LLBlock(num_fea)
        self.CB2 = LLBlock(num_fea)
        self.CB3 = LLBlock(num_fea)
        self.AF1 = AF(num_fea)
        self.AF2 = AF(num_fea)

    def forward(self, x):
        x1 = self.CB1(x)
        x2 = self.CB2(x1)
        x3 = self.CB3(x2)
        return x + self.AF2(self.AF1(x3, x2), x1)


class BFModule(nn.Module):
    """Back-fusion of the four FEB outputs (deepest first), each reduced to num_fea/2 channels."""

    def __init__(self, num_fea):
        super().__init__()
        half = num_fea // 2
        self.conv4 = nn.Conv2d(num_fea, half, 1, 1, 0)
        self.conv3 = nn.Conv2d(num_fea, half, 1, 1, 0)
        self.fuse43 = nn.Conv2d(num_fea, half, 1, 1, 0)
        self.conv2 = nn.Conv2d(num_fea, half, 1, 1, 0)
        self.fuse32 = nn.Conv2d(num_fea, half, 1, 1, 0)
        self.conv1 = nn.Conv2d(num_fea, half, 1, 1, 0)
        self.act = nn.ReLU(inplace=True)

    def forward(self, xs):
        h4 = self.act(self.conv4(xs[3]))
        h3 = self.fuse43(torch.cat([h4, self.act(self.conv3(xs[2]))], dim=1))
        h2 = self.fuse32(torch.cat([h3, self.act(self.conv2(xs[1]))], dim=1))
        return torch.cat([h2, self.act(self.conv1(xs[0]))], dim=1)


class FeNet(nn.Module):
    """FeNet for 1-channel LST (the LST channel counts `in_channels` / `out_channels` are fixed to 1).

    Args (each is the config key `model.<arg>`, except scale, which is derived from data.scale):
        scale: upsampling factor, 2, 4 or 8 (one conv + PixelShuffle(scale) head).
        num_fea: channel width of the features and of every enhancement block (48; even).
        num_LBs: number of feature enhancement blocks (FEB); the back-fusion module needs 4.
    """

    kind = "sisr"
    scales = (2, 4, 8, 16, 32)
    lr_multiple = 1
    unused_parameters = ()

    def __init__(self, scale: int = 8, num_fea=48, num_LBs=4):
        super().__init__()
        assert num_LBs == 4, "the back-fusion module is wired for four blocks"
        self.scale = scale
        self.fea_conv = nn.Sequential(nn.Conv2d(LST_CHANNELS, num_fea, 3, 1, 1), nn.Conv2d(num_fea, num_fea, 3, 1, 1))
        self.LBs = nn.ModuleList([FEB(num_fea) for _ in range(num_LBs)])
        self.BFM = BFModule(num_fea)
        self.upsample = nn.Sequential(
            nn.Conv2d(num_fea, num_fea, 3, 1, 1),
            nn.Conv2d(num_fea, LST_CHANNELS * scale ** 2, 3, 1, 1),
            nn.PixelShuffle(scale))

    def forward(self, lr_lst, hr_guidance=None):
        """lr_lst (B, 1, h, w) normalised LST; hr_guidance is ignored (SISR; None is fine)
        -> (B, 1, h*scale, w*scale) normalised LST."""
        base = F.interpolate(lr_lst, scale_factor=self.scale, mode="bicubic", align_corners=False)
        fea = self.fea_conv(lr_lst)
        outs, t = [], fea
        for block in self.LBs:
            t = block(t)
            outs.append(t)
        return self.upsample(self.BFM(outs) + fea) + base
