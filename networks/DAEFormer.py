"""DAE-Former (HSA-Unet): Dual Attention-guided Efficient Transformer, arXiv 2212.13504.

A U-shaped pure transformer: a 3-stage encoder of dual-attention blocks, a decoder that fuses
each encoder skip through Skip Connection Cross Attention, and a 4x sub-pixel head. The
defaults build the published Synapse configuration, whose checkpoint loads strictly.

The paper ablates the skip connections; ``skips`` and ``skip_attention`` build its variants.
The three encoder outputs (56x56, 28x28, 14x14 for a 224 input) can each be fused into the
decoder level of their size, shallowest first: the published network fuses two (56x56 and 28x28)
through SCCA and feeds the 14x14 output straight into its decoder -- the reference builds the
14x14 fusion too but never calls it; ``skips=3`` calls it, with the tensor names of the
published checkpoint. Without ``skip_attention`` a skip is concatenated and projected, as a
plain U-Net skip is.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from networks.blocks import (
    DualAttentionBlock,
    PatchEmbed,
    PatchExpand,
    SkipCrossAttention,
    check_input,
)

# Modules the reference builds in its 14x14 decoder layer but never calls. Their tensors are in
# the published checkpoint; they are dropped when loading, never built.
UNUSED_REFERENCE_MODULES = re.compile(r"decoder_2\.(x1_linear|cross_attn|concat_linear|layer_former_\d+)\.")

# (kernel, stride) of the three overlapping patch embeddings; total stride 4 * 2 * 2 = 16.
PATCH_EMBEDDINGS = ((7, 4), (3, 2), (3, 2))
INPUT_DIVISOR = 16
FINAL_UPSCALE = 4
MAX_SKIPS = 3  # one per encoder stage


class Encoder(nn.Module):
    """Three stages of patch embedding, dual-attention blocks and a LayerNorm.

    (B, Cin, H, W) -> three skips (B, H/4 * W/4, d0), (B, H/8 * W/8, d1), (B, H/16 * W/16, d2).
    """

    def __init__(self, in_chans: int, dims: tuple[int, int, int], depths: tuple[int, int, int], heads: int) -> None:
        super().__init__()
        # Registration order (all embeddings first) follows the published state dict.
        channels = (in_chans, *dims[:-1])
        for stage, ((kernel, stride), cin, dim) in enumerate(zip(PATCH_EMBEDDINGS, channels, dims), 1):
            self.add_module(f"patch_embed{stage}", PatchEmbed(cin, dim, kernel, stride))
        for stage, (dim, depth) in enumerate(zip(dims, depths), 1):
            self.add_module(f"block{stage}", nn.ModuleList(DualAttentionBlock(dim, heads) for _ in range(depth)))
            self.add_module(f"norm{stage}", nn.LayerNorm(dim))

    def forward(self, x: torch.Tensor) -> list[tuple[torch.Tensor, int, int]]:
        skips = []
        for stage in range(1, len(PATCH_EMBEDDINGS) + 1):
            x, height, width = getattr(self, f"patch_embed{stage}")(x)
            for block in getattr(self, f"block{stage}"):
                x = block(x, height, width)
            x = getattr(self, f"norm{stage}")(x)
            skips.append((x, height, width))
            x = x.transpose(1, 2).unflatten(2, (height, width))
        return skips


class DecoderStage(nn.Module):
    """One decoder level: fuse the skip (SCCA, or a concatenation, or none), two dual-attention
    blocks, upsample.

    (B, N, in_dim) path and (B, N, dim) skip -> (B, 4N, dim/2) tokens, or, for the last stage,
    (B, num_classes, 4H, 4W) logits.
    """

    def __init__(
        self, in_dim: int, dim: int, heads: int, num_classes: int | None = None, skip: bool = True, attention: bool = True
    ) -> None:
        super().__init__()
        self.x1_linear = nn.Linear(in_dim, dim)
        # Registration order (projection, attention, concat) follows the published state dict.
        self.cross_attn = SkipCrossAttention(dim) if skip and attention else None
        self.concat_linear = nn.Linear(2 * dim, dim) if skip else None
        if num_classes is None:
            self.layer_up = PatchExpand(dim, dim // 2, scale=2)
            self.last_layer = None
        else:
            self.layer_up = PatchExpand(dim, dim, scale=FINAL_UPSCALE)
            self.last_layer = nn.Conv2d(dim, num_classes, 1)
        self.layer_former_1 = DualAttentionBlock(dim, heads)
        self.layer_former_2 = DualAttentionBlock(dim, heads)

    def forward(self, path: torch.Tensor, skip: torch.Tensor, height: int, width: int) -> torch.Tensor:
        x = self.x1_linear(path)
        if self.cross_attn is not None:
            x = self.concat_linear(self.cross_attn(x, skip, height, width))
        elif self.concat_linear is not None:
            x = self.concat_linear(torch.cat([x, skip], dim=2))
        x = self.layer_former_2(self.layer_former_1(x, height, width), height, width)
        x = self.layer_up(x, height, width)
        if self.last_layer is None:
            return x
        scale = self.layer_up.scale
        return self.last_layer(x.transpose(1, 2).unflatten(2, (scale * height, scale * width)))


class BottleneckExpand(nn.Module):
    """The 14x14 level of the published decoder: a 2x patch expansion only."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.layer_up = PatchExpand(dim, dim // 2, scale=2)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return self.layer_up(x, height, width)


class DAEFormer(nn.Module):
    """DAE-Former segmentation network.

    Args:
        num_classes: output channels (background included); 9 for Synapse.
        img_size: nominal input size, recorded for the scripts; any height and width that are
            multiples of 16 are accepted at run time.
        in_chans: input channels of the first patch embedding; a 1-channel batch is repeated.
        dims: channels of the three encoder stages (published: 128, 320, 512).
        depths: dual-attention blocks per encoder stage (published: 2, 2, 2).
        heads: channel-attention heads of every block (published: 8).
        skips: encoder outputs fused into the decoder, shallowest first, 0-3 (published: 2, the
            56x56 and 28x28 ones; 3 adds the 14x14 fusion the reference builds but never calls).
        skip_attention: fuse the skips through Skip Connection Cross Attention (published) or,
            False, by concatenation and a linear projection.

    Shapes: (B, 1 or in_chans, H, W) -> logits (B, num_classes, H, W), no softmax.
    """

    def __init__(
        self,
        num_classes: int = 9,
        img_size: int = 224,
        in_chans: int = 3,
        dims: tuple[int, int, int] = (128, 320, 512),
        depths: tuple[int, int, int] = (2, 2, 2),
        heads: int = 8,
        skips: int = 2,
        skip_attention: bool = True,
    ) -> None:
        super().__init__()
        dims, depths = tuple(dims), tuple(depths)
        if num_classes < 1:
            raise ValueError(f"DAEFormer: num_classes must be at least 1, got {num_classes}")
        if len(dims) != 3 or len(depths) != 3:
            raise ValueError(f"DAEFormer: dims and depths need 3 entries each, got dims={dims}, depths={depths}")
        if any(dim % heads for dim in dims) or dims[1] % 2 or dims[2] % 2:
            raise ValueError(
                f"DAEFormer: every entry of dims={dims} must be divisible by heads={heads}, and dims[1], dims[2] by 2"
            )
        if min(depths) < 0:
            raise ValueError(f"DAEFormer: depths must be non-negative, got {depths}")
        if skips not in range(MAX_SKIPS + 1):
            raise ValueError(f"DAEFormer: skips must be 0 to {MAX_SKIPS} (published: 2), got {skips}")
        if img_size % INPUT_DIVISOR:
            raise ValueError(f"DAEFormer: img_size must be a multiple of {INPUT_DIVISOR}, got {img_size}")
        self.num_classes = num_classes
        self.img_size = img_size
        self.in_chans = in_chans
        self.skips, self.skip_attention = skips, skip_attention
        self.backbone = Encoder(in_chans, dims, depths, heads)
        fused = [level < skips for level in range(MAX_SKIPS)]  # shallowest level first
        if fused[2]:
            self.decoder_2 = DecoderStage(dims[2], dims[2], heads, attention=skip_attention)
        else:
            self.decoder_2 = BottleneckExpand(dims[2])
        self.decoder_1 = DecoderStage(dims[2] // 2, dims[1], heads, skip=fused[1], attention=skip_attention)
        self.decoder_0 = DecoderStage(
            dims[1] // 2, dims[0], heads, num_classes=num_classes, skip=fused[0], attention=skip_attention
        )
        for decoder in (self.decoder_2, self.decoder_1, self.decoder_0):
            decoder.apply(_init_decoder_weights)
        if not fused[2]:  # the published checkpoint's 14x14 fusion tensors have no module here
            self.register_load_state_dict_pre_hook(_drop_unused_reference_tensors)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute every dual-attention block's activations in the backward pass instead of
        keeping them (``--use-checkpoint``): same gradients, less memory."""
        for block in self.modules():
            if isinstance(block, DualAttentionBlock):
                block.grad_checkpointing = enable

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = check_input(x, self.in_chans, INPUT_DIVISOR, type(self).__name__)
        (skip0, h0, w0), (skip1, h1, w1), (bottom, h2, w2) = self.backbone(x)
        # The 14x14 fusion's path and skip are both the deepest encoder output.
        x = self.decoder_2(bottom, bottom, h2, w2) if self.skips == MAX_SKIPS else self.decoder_2(bottom, h2, w2)
        x = self.decoder_1(x, skip1, h1, w1)
        return self.decoder_0(x, skip0, h0, w0)


def _init_decoder_weights(module: nn.Module) -> None:
    # The reference initialises its decoder this way; the encoder keeps PyTorch's defaults.
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def _drop_unused_reference_tensors(module: nn.Module, state_dict: dict, prefix: str, *_: object) -> None:
    for key in [key for key in state_dict if key.startswith(prefix)]:
        if UNUSED_REFERENCE_MODULES.match(key[len(prefix) :]):
            del state_dict[key]
