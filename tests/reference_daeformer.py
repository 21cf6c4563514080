"""An independent, functional DAE-Former forward pass written from the published description.

It reads weights straight from a state dict in the published layout (the unused tensors are
simply never read) and spells out every step with plain tensor operations -- explicit per-head
loops, explicit index arithmetic for the sub-pixel rearrange -- so that a layout mistake in
``networks/`` (a head order, a q/k/v split, a rearrange) shows up as a mismatch in the tests.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def _ln(sd: dict, key: str, x: Tensor) -> Tensor:
    return F.layer_norm(x, x.shape[-1:], sd[f"{key}.weight"], sd[f"{key}.bias"], eps=1e-5)


def _linear(sd: dict, key: str, x: Tensor) -> Tensor:
    return F.linear(x, sd[f"{key}.weight"], sd.get(f"{key}.bias"))


def _conv1x1_tokens(sd: dict, key: str, x: Tensor) -> Tensor:
    """A 1x1 Conv2d applied to (B, N, C) tokens, written as a matrix product."""
    weight = sd[f"{key}.weight"][:, :, 0, 0]
    return x @ weight.T + sd[f"{key}.bias"]


def _to_grid(x: Tensor, h: int, w: int) -> Tensor:
    b, n, c = x.shape
    return x.permute(0, 2, 1).reshape(b, c, h, w)


def _to_tokens(x: Tensor) -> Tensor:
    b, c, h, w = x.shape
    return x.reshape(b, c, h * w).permute(0, 2, 1)


def _efficient(keys: Tensor, queries: Tensor, values: Tensor) -> Tensor:
    """keys, queries, values as (B, N, C); returns (B, N, C)."""
    k = torch.softmax(keys, dim=1)  # over tokens
    q = torch.softmax(queries, dim=2)  # over channels
    context = k.transpose(1, 2) @ values  # (B, C, C): sum over tokens of k_i v_j
    return q @ context  # out[n, j] = sum_i q[n, i] context[i, j]


def _mixffn(sd: dict, key: str, x: Tensor, h: int, w: int) -> Tensor:
    hidden = _linear(sd, f"{key}.fc1", x)
    conv = F.conv2d(
        _to_grid(hidden, h, w),
        sd[f"{key}.dwconv.dwconv.weight"],
        sd[f"{key}.dwconv.dwconv.bias"],
        padding=1,
        groups=hidden.shape[-1],
    )
    hidden = F.gelu(_ln(sd, f"{key}.norm1", _to_tokens(conv) + hidden))
    return _linear(sd, f"{key}.fc2", hidden)


def _channel_attention(sd: dict, key: str, x: Tensor, heads: int) -> Tensor:
    b, n, c = x.shape
    qkv = x @ sd[f"{key}.qkv.weight"].T
    per_head = c // heads
    outputs = []
    for g in range(heads):
        q = qkv[:, :, g * per_head : (g + 1) * per_head].transpose(1, 2)
        k = qkv[:, :, c + g * per_head : c + (g + 1) * per_head].transpose(1, 2)
        v = qkv[:, :, 2 * c + g * per_head : 2 * c + (g + 1) * per_head].transpose(1, 2)
        q = q / q.norm(dim=2, keepdim=True).clamp_min(1e-12)
        k = k / k.norm(dim=2, keepdim=True).clamp_min(1e-12)
        attn = torch.softmax(q @ k.transpose(1, 2) * sd[f"{key}.temperature"][g], dim=-1)
        outputs.append((attn @ v).transpose(1, 2))
    return _linear(sd, f"{key}.proj", torch.cat(outputs, dim=2))


def _block(sd: dict, key: str, x: Tensor, h: int, w: int, heads: int) -> Tensor:
    y = _ln(sd, f"{key}.norm1", x)
    attended = _efficient(
        _conv1x1_tokens(sd, f"{key}.attn.keys", y),
        _conv1x1_tokens(sd, f"{key}.attn.queries", y),
        _conv1x1_tokens(sd, f"{key}.attn.values", y),
    )
    x = x + _conv1x1_tokens(sd, f"{key}.attn.reprojection", attended)
    x = x + _mixffn(sd, f"{key}.mlp1", _ln(sd, f"{key}.norm2", x), h, w)
    x = x + _channel_attention(sd, f"{key}.channel_attn", _ln(sd, f"{key}.norm3", x), heads)
    return x + _mixffn(sd, f"{key}.mlp2", _ln(sd, f"{key}.norm4", x), h, w)


def _expand(sd: dict, key: str, x: Tensor, h: int, w: int, scale: int) -> Tensor:
    y = x @ sd[f"{key}.expand.weight"].T  # (B, h*w, scale*scale*c)
    b, _, total = y.shape
    c = total // (scale * scale)
    out = torch.empty(b, h * scale, w * scale, c, dtype=y.dtype)
    grid = y.reshape(b, h, w, total)
    for p1 in range(scale):
        for p2 in range(scale):
            start = (p1 * scale + p2) * c
            out[:, p1::scale, p2::scale, :] = grid[:, :, :, start : start + c]
    return _ln(sd, f"{key}.norm", out.reshape(b, h * scale * w * scale, c))


def _scca(sd: dict, key: str, path: Tensor, skip: Tensor, h: int, w: int) -> Tensor:
    normed_path = _ln(sd, f"{key}.norm1", path)
    normed_skip = _ln(sd, f"{key}.norm1", skip)
    attended = _efficient(normed_skip, normed_skip, normed_path)
    lifted = _ln(sd, f"{key}.attn.norm", _conv1x1_tokens(sd, f"{key}.attn.reprojection", attended))
    t = torch.cat([path, skip], dim=2) + lifted
    return t + _mixffn(sd, f"{key}.mlp", _ln(sd, f"{key}.norm2", t), h, w)


def reference_forward(sd: dict, x: Tensor, depths=(2, 2, 2), heads: int = 8) -> Tensor:
    """Logits (B, num_classes, H, W) of DAE-Former with the weights of ``sd`` for ``x``."""
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    skips = []
    image = x
    for stage, (stride, padding) in enumerate(((4, 3), (2, 1), (2, 1)), 1):
        key = f"backbone.patch_embed{stage}"
        grid = F.conv2d(image, sd[f"{key}.proj.weight"], sd[f"{key}.proj.bias"], stride=stride, padding=padding)
        h, w = grid.shape[-2:]
        tokens = _ln(sd, f"{key}.norm", _to_tokens(grid))
        for i in range(depths[stage - 1]):
            tokens = _block(sd, f"backbone.block{stage}.{i}", tokens, h, w, heads)
        tokens = _ln(sd, f"backbone.norm{stage}", tokens)
        skips.append((tokens, h, w))
        image = _to_grid(tokens, h, w)

    (s0, h0, w0), (s1, h1, w1), (s2, h2, w2) = skips
    x = _expand(sd, "decoder_2.layer_up", s2, h2, w2, 2)
    for level, (skip, h, w) in (("decoder_1", (s1, h1, w1)), ("decoder_0", (s0, h0, w0))):
        x = _linear(sd, f"{level}.x1_linear", x)
        x = _linear(sd, f"{level}.concat_linear", _scca(sd, f"{level}.cross_attn", x, skip, h, w))
        x = _block(sd, f"{level}.layer_former_1", x, h, w, heads)
        x = _block(sd, f"{level}.layer_former_2", x, h, w, heads)
        scale = 4 if level == "decoder_0" else 2
        x = _expand(sd, f"{level}.layer_up", x, h, w, scale)
    logits = F.conv2d(_to_grid(x, 4 * h0, 4 * w0), sd["decoder_0.last_layer.weight"], sd["decoder_0.last_layer.bias"])
    return logits
