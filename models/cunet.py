"""CUNet: Deep Convolutional Neural Network for Multi-modal Image Restoration and Fusion (TPAMI 2021).

Common-and-Unique-information-splitting network: three unfolded learned convolutional sparse coding (LISTA)
encoders. net_u codes the unique part u of the bicubic LST, net_v the unique part v of the guidance, and
net_z codes the common part z from the residuals (lst - conv_u(u), guidance - conv_v(v)). The decoder
synthesises the HR LST as conv_1(u) + conv_2(z). Each encoder: p1 = W_in * m, t = soft(p1, lam_in), then 4
iterations t = soft(p1 + t - W_up * W_down * t, lam_i); all convs 9x9, 64 filters, no bias, Xavier init,
thresholds initialised to 0.01.

Reproduces upstream `groklst/models/editors/cunet` (class CUNet, num_filters=64, kernel_size=9).
1,093,839 parameters at every scale. state_dict keys match upstream (`net_u.layer_in.weight`,
`net_u.down_conv_0.weight`, `net_u.lam_0`, `conv_u.weight`, `decoder.conv_1.weight`, ...); outputs were
compared with upstream on the same weights (identical). No upstream bug was found. Input size: any h, w.
There is no global skip: the output is synthesised entirely by the decoder (as upstream).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

# GrokLST downscales a single LST band. A constant, not a model argument: every layer that reads
# or writes the LST is built for one channel, so checkpoints always have the upstream shapes.
LST_CHANNELS = 1


def soft_threshold(x, lam):
    """sign(x) * relu(|x| - lam): the proximal operator of lam * ||x||_1."""
    return torch.sign(x) * F.relu(x.abs() - lam)


def xavier_conv(c_in, c_out, k):
    conv = nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False)
    nn.init.xavier_uniform_(conv.weight)
    return conv


class Prediction(nn.Module):
    """Unfolded LISTA sparse coder: (B,C,H,W) -> sparse code (B,num_filters,H,W)."""

    def __init__(self, num_channels, num_filters=64, kernel_size=9, num_layers=4):
        super().__init__()
        self.num_layers = num_layers
        self.layer_in = xavier_conv(num_channels, num_filters, kernel_size)
        self.lam_in = nn.Parameter(torch.tensor([0.01]))
        for i in range(num_layers):
            setattr(self, f"down_conv_{i}", xavier_conv(num_filters, num_channels, kernel_size))
            setattr(self, f"up_conv_{i}", xavier_conv(num_channels, num_filters, kernel_size))
            setattr(self, f"lam_{i}", nn.Parameter(torch.tensor([0.01])))

    def forward(self, m):
        p1 = self.layer_in(m)
        t = soft_threshold(p1, self.lam_in)
        for i in range(self.num_layers):
            down, up, lam = getattr(self, f"down_conv_{i}"), getattr(self, f"up_conv_{i}"), getattr(self, f"lam_{i}")
            t = soft_threshold(p1 + (t - up(down(t))), lam)
        return t


class Decoder(nn.Module):
    """HR LST = conv_1(u) + conv_2(z)."""

    def __init__(self, channel=1, num_filters=64, kernel_size=9):
        super().__init__()
        self.conv_1 = xavier_conv(num_filters, channel, kernel_size)
        self.conv_2 = xavier_conv(num_filters, channel, kernel_size)

    def forward(self, u, z):
        return self.conv_1(u) + self.conv_2(z)


class CUNet(nn.Module):
    """CUNet (upstream cunet/CUNet; the LST channel count `dep_in_channels` is fixed to 1).

    Args (each is the config key `model.<arg>`, except scale and guidance_channels, which are
    derived from data.scale and len(data.guidance_bands)):
        scale: upsampling factor, 2, 4 or 8 (only sets the bicubic pre-upsampling: all layers run at HR).
        guidance_channels: number of guidance bands C (10 in GrokLST).
        num_filters: number of sparse-code channels (convolutional dictionary atoms) of each encoder (64).
        kernel_size: side of every (dictionary) convolution, in HR pixels (9).
    """

    kind = "gisr"
    scales = (2, 4, 8, 16, 32)
    lr_multiple = 1
    unused_parameters = ()

    def __init__(self, scale: int = 8, guidance_channels: int = 10, num_filters: int = 64, kernel_size: int = 9):
        super().__init__()
        self.scale = scale
        nf, k = num_filters, kernel_size
        self.net_u = Prediction(LST_CHANNELS, nf, k)
        self.conv_u = xavier_conv(nf, LST_CHANNELS, k)
        self.net_v = Prediction(guidance_channels, nf, k)
        self.conv_v = xavier_conv(nf, guidance_channels, k)
        self.net_z = Prediction(guidance_channels + LST_CHANNELS, nf, k)
        self.decoder = Decoder(LST_CHANNELS, nf, k)

    def forward(self, lr_lst, hr_guidance=None):
        """lr_lst (B, 1, h, w) normalised LST, hr_guidance (B, C, h*scale, w*scale) normalised guidance
        (C = guidance_channels) -> (B, 1, h*scale, w*scale) normalised LST."""
        x = F.interpolate(lr_lst, scale_factor=self.scale, mode="bicubic", align_corners=False)
        u = self.net_u(x)
        v = self.net_v(hr_guidance)
        z = self.net_z(torch.cat([x - self.conv_u(u), hr_guidance - self.conv_v(v)], dim=1))
        return self.decoder(u, z)
