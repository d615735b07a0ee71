"""CODON: On Orchestrating Cross-Domain Attentions for Depth Super-Resolution (IJCV 2022).

Guided (GISR) network of Yang et al. The LR LST is first upsampled bicubically to HR; an LST branch and a
guidance branch (64 channels each, all at HR) then run five shared-weight multi-scale stages (3x3 and 5x5
paths, a 5x5 fusion, a 1x1 squeeze). After every stage a cross-domain attention (CAC: channel gate x spatial
gate computed from both branches) re-weights both branches. The branches are merged and refined by three
shared-weight multi-scale stages, and a final conv predicts a residual on the bicubic input. Reproduces
upstream `codon/CODONNet4` and `codon/CODONNet8` (identical apart from the upscale factor) as one class with
a `scale` argument. Parameter count 1,871,320 for x4 and x8. state_dict keys match upstream.
`attention_c5` / `attention_s5` (630 parameters) are built upstream but never called in forward; they are
kept so counts and keys match, and listed in `unused_parameters`. Any LR size works.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def conv(cin, cout, k):
    return nn.Conv2d(cin, cout, k, padding=k // 2, bias=False)


class ChannelGate(nn.Module):
    """CBAM channel gate: sigmoid(mlp(avgpool) + mlp(maxpool)) -> (B, out_channels, 1, 1).

    With `apply=True` (CBAM ChannelGate) returns x * gate; else (CODON CAC_channel) returns the gate only.
    """

    def __init__(self, gate_channels, out_channels=None, reduction_ratio=16, apply=True):
        super().__init__()
        self.apply_gate = apply
        # index 0 was a Flatten upstream; keep indices 1 and 3 so keys match
        self.mlp = nn.Sequential(nn.Flatten(), nn.Linear(gate_channels, gate_channels // reduction_ratio),
                                 nn.ReLU(), nn.Linear(gate_channels // reduction_ratio, out_channels or gate_channels))

    def forward(self, x):
        gate = torch.sigmoid(self.mlp(x.mean((2, 3))) + self.mlp(x.amax((2, 3))))[:, :, None, None]
        return x * gate if self.apply_gate else gate


class BasicConv(nn.Module):
    def __init__(self, cin, cout, k):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=(k - 1) // 2, bias=False)

    def forward(self, x):
        return self.conv(x)


class SpatialGate(nn.Module):
    """CAC spatial gate: sigmoid(conv5x5([max_c(x), mean_c(x)])) -> (B, 1, H, W)."""

    def __init__(self):
        super().__init__()
        self.spatial = BasicConv(2, 1, 5)

    def forward(self, x):
        return torch.sigmoid(self.spatial(torch.cat([x.amax(1, keepdim=True), x.mean(1, keepdim=True)], 1)))


class CODON(nn.Module):
    """CODON (upstream codon/CODONNet4 and CODONNet8 in one class).

    Args (each is the config key `model.<arg>`, except scale and guidance_channels, which are
    derived from data.scale and len(data.guidance_bands)):
        scale: upsampling factor, 4 or 8 (only sets the bicubic pre-upsampling: all layers run at HR).
        guidance_channels: number of guidance bands C (10 in GrokLST).
    """

    kind = "gisr"
    scales = (4, 8, 16, 32)
    lr_multiple = 1
    unused_parameters = ("attention_c5", "attention_s5")  # defined upstream, never used in forward

    def __init__(self, scale: int = 8, guidance_channels: int = 10):
        super().__init__()
        self.scale = scale
        # LST branch
        self.input = conv(1, 64, 3)
        self.conv_input = conv(64, 64, 3)
        self.conv1 = conv(64, 64, 3)
        self.conv2 = conv(64, 64, 5)
        self.conv3 = conv(128, 128, 5)
        self.confuse = conv(128, 64, 1)
        # guidance branch
        self.input_c = conv(guidance_channels, 64, 3)
        self.conv_input_c = conv(64, 64, 3)
        self.conv4 = conv(64, 64, 5)
        self.conv5 = conv(64, 64, 3)
        self.conv6 = conv(128, 128, 5)
        self.confuse_c = conv(128, 64, 1)
        # fusion
        self.conv7 = conv(128, 64, 3)
        self.conv8 = conv(64, 64, 5)
        self.conv9 = conv(64, 64, 3)
        self.conv10 = conv(128, 128, 5)
        self.confuse_fuse = conv(128, 64, 1)
        self.conv11 = conv(64, 64, 3)
        self.output = conv(64, 1, 3)
        self.relu = nn.ReLU()
        for m in self.modules():  # upstream init: N(0, sqrt(2 / (k*k*out))) for the convs above
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))
        for i in range(5):
            setattr(self, f"attention_c{i}", ChannelGate(128, 64, apply=False))
            setattr(self, f"attention_s{i}", SpatialGate())
        self.attention_c5 = ChannelGate(64)
        self.attention_s5 = SpatialGate()

    def forward(self, lr_lst, hr_guidance=None):
        """lr_lst (B, 1, h, w) normalised LST, hr_guidance (B, C, h*scale, w*scale) normalised guidance
        (C = guidance_channels) -> (B, 1, h*scale, w*scale) normalised LST."""
        r = self.relu
        residual = F.interpolate(lr_lst, scale_factor=self.scale, mode="bicubic", align_corners=False)
        inputs = r(self.conv_input(r(self.input(residual))))
        inputs_c = r(self.conv_input_c(r(self.input_c(hr_guidance))))
        out, out_c = inputs, inputs_c
        for i in range(5):
            d = self.confuse(r(self.conv3(torch.cat([r(self.conv1(out)), r(self.conv2(out))], 1))))
            c = self.confuse_c(r(self.conv6(torch.cat([r(self.conv4(out_c)), r(self.conv5(out_c))], 1))))
            both = torch.cat([c, d], 1)
            att = getattr(self, f"attention_c{i}")(both) * getattr(self, f"attention_s{i}")(both)
            out = d * att + inputs
            out_c = c * att + inputs_c
        fuse = r(self.conv7(torch.cat([out, out_c], 1)))
        out = fuse
        for _ in range(3):
            out = self.confuse_fuse(r(self.conv10(torch.cat([r(self.conv8(out)), r(self.conv9(out))], 1)))) + fuse
        return self.output(r(self.conv11(out))) + residual
