"""SRFBN: Feedback Network for Image Super-Resolution (CVPR 2019).

Li et al.'s recurrent SR network. LR features (3x3 conv to 4F, 1x1 to F) enter a feedback block that
is unrolled for `num_steps` steps; at each step the block sees the LR features concatenated with its
own previous output (the hidden state; at step 0 the LR features themselves). Inside, `num_groups`
densely connected up/down projection pairs (strided transposed conv / strided conv, as in DBPN)
refine the features. The last step's hidden state is upsampled by a strided transposed conv, mapped
to 1 channel by a 3x3 conv and added to a bilinear upsampling of the LR input.
All activations are PReLU (one slope, initialised at 0.2).

Reproduces upstream GrokLST `groklst/models/editors/srfbn/srfbn.py::SRFBN` (in/out_channels=1,
num_features=32, num_steps=4, num_groups=3, act_type="prelu", norm_type=None). Projection kernel /
stride / padding per scale: x2 6/2/2, x4 8/4/2, x8 12/8/2.
Parameters: x2 279,536 / x4 480,240 / x8 1,053,680. state_dict keys match upstream (conv_in, feat_in,
block.{compress_in, upBlocks, downBlocks, uptranBlocks, downtranBlocks, compress_out}, out, conv_out);
outputs were compared with upstream on shared weights (identical).

Fixes (no parameter involved, so counts are unchanged): upstream allocates the initial hidden state
with `torch.zeros(...).cuda()`, which crashes on CPU; here the hidden state is the LR feature tensor
itself (what upstream copies into that buffer), held as a local variable instead of module state, so
the model is also safe under DataParallel / re-entrant calls. Upstream also runs the reconstruction
head at every step but returns only the last step; the unused heads are skipped here (same output).
Input size: any h, w.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

# GrokLST downscales a single LST band. A constant, not a model argument: every layer that reads
# or writes the LST is built for one channel, so checkpoints always have the upstream shapes.
LST_CHANNELS = 1

_PROJ = {2: (6, 2, 2), 3: (7, 3, 2), 4: (8, 4, 2), 8: (12, 8, 2)}  # scale -> kernel, stride, padding


def conv_block(in_ch, out_ch, kernel_size, stride=1, padding=None, act=True):
    """Conv2d (+ PReLU(init 0.2)) as nn.Sequential; padding defaults to 'same' ((k - 1) // 2)."""
    padding = (kernel_size - 1) // 2 if padding is None else padding
    layers = [nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=padding)]
    if act:
        layers.append(nn.PReLU(num_parameters=1, init=0.2))
    return nn.Sequential(*layers)


def deconv_block(in_ch, out_ch, kernel_size, stride, padding):
    """ConvTranspose2d + PReLU(init 0.2) as nn.Sequential."""
    return nn.Sequential(nn.ConvTranspose2d(in_ch, out_ch, kernel_size, stride, padding),
                         nn.PReLU(num_parameters=1, init=0.2))


class FeedbackBlock(nn.Module):
    """(x, hidden): two (B, F, h, w) maps -> new hidden (B, F, h, w)."""

    def __init__(self, num_features, num_groups, scale):
        super().__init__()
        k, s, p = _PROJ[scale]
        f = num_features
        self.num_groups = num_groups
        self.compress_in = conv_block(2 * f, f, 1)
        self.upBlocks = nn.ModuleList([deconv_block(f, f, k, s, p) for _ in range(num_groups)])
        self.downBlocks = nn.ModuleList([conv_block(f, f, k, s, p) for _ in range(num_groups)])
        self.uptranBlocks = nn.ModuleList([conv_block(f * (i + 1), f, 1) for i in range(1, num_groups)])
        self.downtranBlocks = nn.ModuleList([conv_block(f * (i + 1), f, 1) for i in range(1, num_groups)])
        self.compress_out = conv_block(num_groups * f, f, 1)

    def forward(self, x, hidden):
        x = self.compress_in(torch.cat((x, hidden), 1))
        lr_feats, hr_feats = [x], []
        for i in range(self.num_groups):
            t = torch.cat(lr_feats, 1)
            if i > 0:
                t = self.uptranBlocks[i - 1](t)
            hr_feats.append(self.upBlocks[i](t))
            t = torch.cat(hr_feats, 1)
            if i > 0:
                t = self.downtranBlocks[i - 1](t)
            lr_feats.append(self.downBlocks[i](t))
        return self.compress_out(torch.cat(lr_feats[1:], 1))


class SRFBN(nn.Module):
    """SRFBN for 1-channel LST (the LST channel counts `in_channels` / `out_channels` are fixed to 1).

    Args (each is the config key `model.<arg>`, except scale, which is derived from data.scale):
        scale: upsampling factor, 2, 4 or 8 (sets the projection kernel / stride / padding).
        num_features: channel width F of the feedback block (32; the first conv is 4F wide).
        num_steps: unrolled feedback iterations (4); only the last one's output is returned.
        num_groups: densely connected up/down projection pairs inside the feedback block (3).
    """

    kind = "sisr"
    scales = (2, 4, 8)
    lr_multiple = 1
    unused_parameters = ()

    def __init__(self, scale: int = 8, num_features=32, num_steps=4, num_groups=3):
        super().__init__()
        k, s, p = _PROJ[scale]
        self.scale = scale
        self.num_steps = num_steps
        self.conv_in = conv_block(LST_CHANNELS, 4 * num_features, 3)
        self.feat_in = conv_block(4 * num_features, num_features, 1)
        self.block = FeedbackBlock(num_features, num_groups, scale)
        self.out = deconv_block(num_features, num_features, k, s, p)
        self.conv_out = conv_block(num_features, LST_CHANNELS, 3, act=False)

    def forward(self, lr_lst, hr_guidance=None):
        """lr_lst (B, 1, h, w) normalised LST; hr_guidance is ignored (SISR; None is fine)
        -> (B, 1, h*scale, w*scale) normalised LST."""
        up = F.interpolate(lr_lst, scale_factor=self.scale, mode="bilinear", align_corners=False)
        x = self.feat_in(self.conv_in(lr_lst))
        hidden = x
        for _ in range(self.num_steps):
            hidden = self.block(x, hidden)
        return up + self.conv_out(self.out(hidden))
