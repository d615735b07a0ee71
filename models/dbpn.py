"""DBPN: Deep Back-Projection Networks for Super-Resolution (CVPR 2018).

Haris et al.'s network of iterative up- and down-projection units. Each up-projection maps LR
features to HR with a strided transposed conv, maps back down with a strided conv, and corrects
the HR estimate with the back-projected LR error (and mirror-wise for down-projection). This is the
dense variant (D-DBPN): every unit after the second first fuses the concatenation of all previous
outputs of the opposite kind with a 1x1 conv. The HR maps of all 7 up units are concatenated and a
3x3 conv reconstructs the image (no global skip).

Reproduces upstream GrokLST `groklst/models/editors/dbpn/dbpn.py::DBPN` (num_channels=1,
base_filter=64, feat=256, num_stages=7). Projection kernel / stride / padding per scale:
x2 6/2/2, x4 8/4/2, x8 12/8/2. All convs and transposed convs carry a PReLU (one slope each) except
the output conv; weights are kaiming-normal with zero biases, as upstream.
Parameters: x2 5,940,852 / x4 10,413,684 / x8 23,193,204. state_dict keys match upstream
(feat0, feat1, up1..up7, down1..down6, output_conv; inner conv/deconv/act); outputs were compared
with upstream on shared weights (identical). Input size: any h, w.
"""
import torch
import torch.nn as nn

# GrokLST downscales a single LST band. A constant, not a model argument: every layer that reads
# or writes the LST is built for one channel, so checkpoints always have the upstream shapes.
LST_CHANNELS = 1


class ConvBlock(nn.Module):
    """Conv2d (+ PReLU unless activation is None)."""

    def __init__(self, in_ch, out_ch, kernel_size=3, stride=1, padding=1, activation="prelu"):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding)
        self.activation = activation
        if activation == "prelu":
            self.act = nn.PReLU()

    def forward(self, x):
        x = self.conv(x)
        return self.act(x) if self.activation is not None else x


class DeconvBlock(nn.Module):
    """ConvTranspose2d + PReLU."""

    def __init__(self, in_ch, out_ch, kernel_size, stride, padding):
        super().__init__()
        self.deconv = nn.ConvTranspose2d(in_ch, out_ch, kernel_size, stride, padding)
        self.act = nn.PReLU()

    def forward(self, x):
        return self.act(self.deconv(x))


class UpBlock(nn.Module):
    """Up-projection (B, C, h, w) -> (B, C, s*h, s*w): h0 = up(x); h1 = up(down(h0) - x); h0 + h1.
    With num_stages > 1 (dense variant) a 1x1 conv first fuses C*num_stages input channels to C."""

    def __init__(self, num_filter, kernel_size, stride, padding, num_stages=1):
        super().__init__()
        self.dense = num_stages > 1
        if self.dense:
            self.conv = ConvBlock(num_filter * num_stages, num_filter, 1, 1, 0)
        self.up_conv1 = DeconvBlock(num_filter, num_filter, kernel_size, stride, padding)
        self.up_conv2 = ConvBlock(num_filter, num_filter, kernel_size, stride, padding)
        self.up_conv3 = DeconvBlock(num_filter, num_filter, kernel_size, stride, padding)

    def forward(self, x):
        if self.dense:
            x = self.conv(x)
        h0 = self.up_conv1(x)
        l0 = self.up_conv2(h0)
        return self.up_conv3(l0 - x) + h0


class DownBlock(nn.Module):
    """Down-projection (B, C, s*h, s*w) -> (B, C, h, w): l0 = down(x); l1 = down(up(l0) - x); l0 + l1.
    With num_stages > 1 (dense variant) a 1x1 conv first fuses C*num_stages input channels to C."""

    def __init__(self, num_filter, kernel_size, stride, padding, num_stages=1):
        super().__init__()
        self.dense = num_stages > 1
        if self.dense:
            self.conv = ConvBlock(num_filter * num_stages, num_filter, 1, 1, 0)
        self.down_conv1 = ConvBlock(num_filter, num_filter, kernel_size, stride, padding)
        self.down_conv2 = DeconvBlock(num_filter, num_filter, kernel_size, stride, padding)
        self.down_conv3 = ConvBlock(num_filter, num_filter, kernel_size, stride, padding)

    def forward(self, x):
        if self.dense:
            x = self.conv(x)
        l0 = self.down_conv1(x)
        h0 = self.down_conv2(l0)
        return self.down_conv3(h0 - x) + l0


class DBPN(nn.Module):
    """Dense DBPN for 1-channel LST (the LST channel count `num_channels` is fixed to 1).

    Args (each is the config key `model.<arg>`, except scale, which is derived from data.scale):
        scale: upsampling factor, 2, 4 or 8 (sets the projection kernel / stride / padding).
        base_filter: channel width of the projection units (64).
        feat: channel width of the initial 3x3 feature conv (256).
        num_stages: number of up-projection units (7); their HR maps are concatenated for the output.
    """

    kind = "sisr"
    scales = (2, 4, 8)
    lr_multiple = 1
    unused_parameters = ()

    def __init__(self, scale: int = 8, base_filter=64, feat=256, num_stages=7):
        super().__init__()
        kernel, stride, padding = {2: (6, 2, 2), 4: (8, 4, 2), 8: (12, 8, 2)}[scale]
        proj = (base_filter, kernel, stride, padding)
        self.num_stages = num_stages
        self.feat0 = ConvBlock(LST_CHANNELS, feat, 3, 1, 1)
        self.feat1 = ConvBlock(feat, base_filter, 1, 1, 0)
        # up1, down1, up2 are plain; down_k / up_(k+1) for k >= 2 fuse k previous maps (dense variant)
        self.up1 = UpBlock(*proj)
        self.down1 = DownBlock(*proj)
        self.up2 = UpBlock(*proj)
        for k in range(2, num_stages):
            setattr(self, f"down{k}", DownBlock(*proj, num_stages=k))
            setattr(self, f"up{k + 1}", UpBlock(*proj, num_stages=k))
        self.output_conv = ConvBlock(num_stages * base_filter, LST_CHANNELS, 3, 1, 1, activation=None)

        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, lr_lst, hr_guidance=None):
        """lr_lst (B, 1, h, w) normalised LST; hr_guidance is ignored (SISR; None is fine)
        -> (B, 1, h*scale, w*scale) normalised LST."""
        x = self.feat1(self.feat0(lr_lst))
        h1 = self.up1(x)
        l1 = self.down1(h1)
        h2 = self.up2(l1)
        hs = torch.cat((h2, h1), 1)  # HR maps, newest first
        ls = l1  # LR maps, newest first
        for k in range(2, self.num_stages):
            ls = torch.cat((getattr(self, f"down{k}")(hs), ls), 1)
            hs = torch.cat((getattr(self, f"up{k + 1}")(ls), hs), 1)
        return self.output_conv(hs)
