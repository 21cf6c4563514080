"""Building blocks of DAE-Former, each defined once.

Tokens are kept as ``(B, N, C)`` sequences in row-major ``(h, w)`` order, the layout of the
published weights; blocks that need the image grid receive ``(H, W)`` explicitly. Parameter
names follow the published checkpoint so that its tensors load without renaming.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

# The reference's Mix-FFN builds two LayerNorms it never calls; the published checkpoint still
# carries their tensors. They are dropped when loading (see MixFFN), never built.
UNUSED_MIXFFN_NORMS = ("norm2", "norm3")


def check_input(x: torch.Tensor, in_chans: int, divisor: int, network: str) -> torch.Tensor:
    """Validate a network input and repeat a 1-channel image to ``in_chans`` channels.

    Args:
        x: (B, 1 or in_chans, H, W) image batch.
        in_chans: channels the network was built for.
        divisor: H and W must be multiples of it.
        network: class name, for the error message.

    Returns:
        (B, in_chans, H, W).
    """
    if x.dim() != 4:
        raise ValueError(f"{network} expects a (B, C, H, W) batch, got shape {tuple(x.shape)}")
    _, channels, height, width = x.shape
    if height % divisor or width % divisor or height == 0 or width == 0:
        fit_h = max(divisor, -(-height // divisor) * divisor)
        fit_w = max(divisor, -(-width // divisor) * divisor)
        raise ValueError(
            f"{network} takes height and width that are multiples of {divisor}, got "
            f"{height}x{width}; pad or resize to {fit_h}x{fit_w} (e.g. --img_size {fit_h})"
        )
    if channels == in_chans:
        return x
    if channels == 1:
        return x.expand(-1, in_chans, -1, -1)
    raise ValueError(f"{network} was built for {in_chans}-channel input (or 1 channel), got {channels}")


def efficient_attention(keys: torch.Tensor, queries: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Linear-complexity attention of Shen et al. (one head, no scaling).

    Args:
        keys, queries: (B, Ck, N). values: (B, Cv, N).

    Returns:
        (B, Cv, N): ``context^T @ softmax_channels(queries)`` with
        ``context = softmax_tokens(keys) @ values^T`` of shape (B, Ck, Cv).
    """
    context = keys.softmax(dim=2) @ values.transpose(1, 2)
    return context.transpose(1, 2) @ queries.softmax(dim=1)


class EfficientAttention(nn.Module):
    """Spatial efficient attention with 1x1-convolution projections: (B, N, C) -> (B, N, C)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.keys = nn.Conv2d(dim, dim, 1)
        self.queries = nn.Conv2d(dim, dim, 1)
        self.values = nn.Conv2d(dim, dim, 1)
        self.reprojection = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        grid = rearrange(x, "b (h w) c -> b c h w", h=height, w=width)
        attended = efficient_attention(self.keys(grid).flatten(2), self.queries(grid).flatten(2), self.values(grid).flatten(2))
        out = self.reprojection(attended.unflatten(2, (height, width)))
        return rearrange(out, "b c h w -> b (h w) c")


class ChannelAttention(nn.Module):
    """Transpose ("channel") attention with a learnable temperature per head: (B, N, C) -> (B, N, C).

    ``qkv`` outputs ``[q | k | v]``, each split into ``heads`` consecutive channel groups; heads
    attend over channels, with q and k L2-normalised along the token axis.
    """

    def __init__(self, dim: int, heads: int = 8) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"ChannelAttention: dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = rearrange(self.qkv(x), "b n (three g c) -> three b g c n", three=3, g=self.heads)
        q = F.normalize(q, dim=-1)
        k = F.normalize(k, dim=-1)
        attn = ((q @ k.transpose(-2, -1)) * self.temperature).softmax(dim=-1)
        return self.proj(rearrange(attn @ v, "b g c n -> b n (g c)"))


class DepthwiseConv(nn.Module):
    """3x3 depth-wise convolution on the token grid: (B, N, C) -> (B, N, C)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        grid = rearrange(x, "b (h w) c -> b c h w", h=height, w=width)
        return rearrange(self.dwconv(grid), "b c h w -> b (h w) c")


class MixFFN(nn.Module):
    """Mix-FFN with skip: ``fc2(GELU(LN(DWConv(fc1(x)) + fc1(x))))``: (B, N, C) -> (B, N, C)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DepthwiseConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.norm1 = nn.LayerNorm(hidden)
        self.register_load_state_dict_pre_hook(_drop_unused_mixffn_norms)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        hidden = self.fc1(x)
        hidden = self.act(self.norm1(self.dwconv(hidden, height, width) + hidden))
        return self.fc2(hidden)


def _drop_unused_mixffn_norms(module: nn.Module, state_dict: dict, prefix: str, *_: object) -> None:
    for norm in UNUSED_MIXFFN_NORMS:
        for tensor in ("weight", "bias"):
            state_dict.pop(f"{prefix}{norm}.{tensor}", None)


class DualAttentionBlock(nn.Module):
    """DAE-Former block: spatial attention, Mix-FFN, channel attention, Mix-FFN, each pre-norm
    with a residual connection. (B, N, C) -> (B, N, C).

    With ``grad_checkpointing`` set (``DAEFormer.set_grad_checkpointing``), training keeps only
    the block's input and recomputes its activations in the backward pass: the same gradients
    for less memory and about one more forward pass of time.
    """

    grad_checkpointing = False

    def __init__(self, dim: int, heads: int = 8, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = EfficientAttention(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.channel_attn = ChannelAttention(dim, heads)
        self.norm4 = nn.LayerNorm(dim)
        self.mlp1 = MixFFN(dim, mlp_ratio * dim)
        self.mlp2 = MixFFN(dim, mlp_ratio * dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(self._forward, x, height, width, use_reentrant=False)
        return self._forward(x, height, width)

    def _forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), height, width)
        x = x + self.mlp1(self.norm2(x), height, width)
        x = x + self.channel_attn(self.norm3(x))
        return x + self.mlp2(self.norm4(x), height, width)


class PatchEmbed(nn.Module):
    """Overlapping patch embedding: Conv2d then LayerNorm on the tokens.

    (B, Cin, H, W) -> ((B, H/stride * W/stride, C), H/stride, W/stride).
    """

    def __init__(self, in_chans: int, dim: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size, stride, padding=kernel_size // 2)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        height, width = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), height, width


class PatchExpand(nn.Module):
    """Sub-pixel upsampling of tokens by ``scale``: Linear, rearrange, LayerNorm.

    (B, H*W, dim) -> (B, (scale*H)*(scale*W), out_dim); the Linear maps dim -> scale^2 * out_dim
    and channel c of a token splits as (p1, p2, c') with p1, p2 the offsets inside the patch.
    """

    def __init__(self, dim: int, out_dim: int, scale: int) -> None:
        super().__init__()
        self.scale = scale
        self.expand = nn.Linear(dim, scale * scale * out_dim, bias=False)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        x = rearrange(
            self.expand(x),
            "b (h w) (p1 p2 c) -> b (h p1 w p2) c",
            h=height,
            w=width,
            p1=self.scale,
            p2=self.scale,
        )
        return self.norm(x)


class SkipCrossAttention(nn.Module):
    """Skip Connection Cross Attention (SCCA): fuses the decoder path with an encoder skip.

    Efficient attention with keys = queries = LN(skip) and values = LN(path) (one shared
    LayerNorm, no projections), lifted to 2D channels and added to ``concat(path, skip)``,
    followed by a pre-norm Mix-FFN. (B, N, D), (B, N, D) -> (B, N, 2D).
    """

    def __init__(self, dim: int, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _SkipAttentionProjection(dim)
        self.norm2 = nn.LayerNorm(2 * dim)
        # The reference sizes this Mix-FFN's hidden layer from D, not from its 2D input.
        self.mlp = MixFFN(2 * dim, mlp_ratio * dim)

    def forward(self, path: torch.Tensor, skip: torch.Tensor, height: int, width: int) -> torch.Tensor:
        skip_normed = self.norm1(skip).transpose(1, 2)
        attended = efficient_attention(skip_normed, skip_normed, self.norm1(path).transpose(1, 2))
        x = torch.cat([path, skip], dim=2) + self.attn(attended, height, width)
        return x + self.mlp(self.norm2(x), height, width)


class _SkipAttentionProjection(nn.Module):
    """The 1x1 Conv2d D -> 2D and LayerNorm(2D) after SCCA's attention: (B, D, N) -> (B, N, 2D)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.reprojection = nn.Conv2d(dim, 2 * dim, 1)
        self.norm = nn.LayerNorm(2 * dim)

    def forward(self, attended: torch.Tensor, height: int, width: int) -> torch.Tensor:
        out = self.reprojection(attended.unflatten(2, (height, width)))
        return self.norm(out.flatten(2).transpose(1, 2))
