"""A small grayscale U-Net with switchable timestep-embedding injection and skip connections.

It reproduces the four networks of Nguyen et al. ("A New Chapter for Medical Image Generation: The
Stable Diffusion Method", Table I) with one class:

- ``time_embedding="every_block"``: the embedding is injected into every down, middle and up block
  (the proposed model);
- ``"once"``: injected once, added to the input features only;
- ``"encoder"``: injected only in the encoder (down) half;
- ``skip_connections=False``: an encoder-decoder without U-Net skips.

The blocks are diffusers' own (``ResnetBlock2D``, ``Downsample2D``, ``Upsample2D``, ``Attention``);
only the wiring is ours.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.resnet import Downsample2D, ResnetBlock2D, Upsample2D
from diffusers.utils import BaseOutput
from torch import nn

TIME_EMBEDDING_MODES = ("every_block", "once", "encoder")


@dataclass
class LightUNet2DOutput(BaseOutput):
    sample: torch.Tensor


class _Level(nn.Module):
    """ResNet blocks (optionally followed by self-attention) at one resolution."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        n_layers: int,
        temb_ch: int | None,
        groups: int,
        attn: bool,
        dropout: float,
    ):
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock2D(
                in_channels=in_ch if i == 0 else out_ch,
                out_channels=out_ch,
                temb_channels=temb_ch,
                groups=groups,
                dropout=dropout,
            )
            for i in range(n_layers)
        )
        self.attentions = nn.ModuleList(
            Attention(
                out_ch,
                heads=max(1, out_ch // 32),
                dim_head=min(out_ch, 32),
                norm_num_groups=groups,
                residual_connection=True,
                bias=True,
                upcast_softmax=True,
            )
            for _ in range(n_layers if attn else 0)
        )
        self.uses_time = temb_ch is not None

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None) -> torch.Tensor:
        temb = temb if self.uses_time else None
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, temb)
            if self.attentions:
                x = self.attentions[i](x)
        return x


class LightUNet2DModel(ModelMixin, ConfigMixin):
    """Lightweight U-Net for 1-channel CT / X-ray diffusion (any image size).

    Args:
        sample_size: nominal image size (informational; any size works, padded internally).
        in_channels / out_channels: 1 for unconditional grayscale; more inputs for conditional models.
        block_out_channels: channels per resolution level (its length is the depth).
        layers_per_block: ResNet blocks per level.
        norm_num_groups: GroupNorm groups.
        attention_levels: indices of levels with self-attention (e.g. ``(2,)``).
        time_embedding: where the timestep reaches the network: "every_block", "once" or "encoder".
        skip_connections: False gives the encoder-decoder baseline (no concatenation in the decoder).
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        sample_size: int = 64,
        in_channels: int = 1,
        out_channels: int = 1,
        block_out_channels: tuple[int, ...] = (32, 64, 128, 256),
        layers_per_block: int = 1,
        norm_num_groups: int = 8,
        attention_levels: tuple[int, ...] = (),
        time_embedding: str = "every_block",
        skip_connections: bool = True,
        dropout: float = 0.0,
    ):
        super().__init__()
        if time_embedding not in TIME_EMBEDDING_MODES:
            raise ValueError(f"time_embedding must be one of {TIME_EMBEDDING_MODES}, got {time_embedding!r}")
        if any(c % norm_num_groups for c in block_out_channels):
            raise ValueError(
                f"every entry of block_out_channels {block_out_channels} must divide by norm_num_groups={norm_num_groups}"
            )
        chans = list(block_out_channels)
        temb_dim = chans[0] * 4
        self.time_proj = Timesteps(chans[0], flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_mlp = TimestepEmbedding(chans[0], temb_dim)
        self.conv_in = nn.Conv2d(in_channels, chans[0], kernel_size=3, padding=1)
        # "once": the embedding is added to the input features and nowhere else.
        self.input_time_proj = nn.Linear(temb_dim, chans[0]) if time_embedding == "once" else None

        down_t = temb_dim if time_embedding in ("every_block", "encoder") else None
        up_t = temb_dim if time_embedding == "every_block" else None
        attn = set(attention_levels)
        self.down_levels = nn.ModuleList()
        self.downsamplers = nn.ModuleList()
        for i, ch in enumerate(chans):
            prev = chans[i - 1] if i > 0 else chans[0]
            self.down_levels.append(
                _Level(prev, ch, layers_per_block, down_t, norm_num_groups, i in attn, dropout)
            )
            if i < len(chans) - 1:
                self.downsamplers.append(
                    Downsample2D(ch, use_conv=True, out_channels=ch, padding=1, name="op")
                )
        self.mid = _Level(chans[-1], chans[-1], 1, up_t, norm_num_groups, True, dropout)
        self.up_levels = nn.ModuleList()
        self.upsamplers = nn.ModuleList()
        for i in reversed(range(len(chans))):
            in_ch = chans[i + 1] if i < len(chans) - 1 else chans[-1]
            cat = chans[i] if skip_connections else 0
            self.up_levels.append(
                _Level(in_ch + cat, chans[i], layers_per_block, up_t, norm_num_groups, i in attn, dropout)
            )
            if i > 0:
                self.upsamplers.append(Upsample2D(chans[i], use_conv=True, out_channels=chans[i]))
        self.norm_out = nn.GroupNorm(norm_num_groups, chans[0])
        self.conv_out = nn.Conv2d(chans[0], out_channels, kernel_size=3, padding=1)
        self.gradient_checkpointing = False

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.config.block_out_channels) - 1)

    def embed_time(
        self, timestep: torch.Tensor | float | int, batch: int, dtype: torch.dtype, device: torch.device
    ) -> torch.Tensor:
        t = torch.as_tensor(timestep, device=device)
        if t.ndim == 0:
            t = t[None]
        t = t.expand(batch)
        return self.time_mlp(self.time_proj(t).to(dtype))

    def _run(self, level: nn.Module, x: torch.Tensor, temb: torch.Tensor | None) -> torch.Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return self._gradient_checkpointing_func(level, x, temb)
        return level(x, temb)

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor | float | int, return_dict: bool = True
    ) -> LightUNet2DOutput | tuple[torch.Tensor]:
        h_in, w_in = sample.shape[-2:]
        f = self.downsample_factor
        pad_h, pad_w = (-h_in) % f, (-w_in) % f
        if pad_h or pad_w:  # any size works: pad to a multiple of 2**(depth-1), crop back at the end
            mode = "reflect" if pad_h < h_in and pad_w < w_in else "replicate"
            sample = F.pad(sample, (0, pad_w, 0, pad_h), mode=mode)
        temb = self.embed_time(timestep, sample.shape[0], self.dtype, sample.device)

        x = self.conv_in(sample)
        if self.input_time_proj is not None:
            x = x + self.input_time_proj(F.silu(temb))[:, :, None, None]
        skips = []
        for i, level in enumerate(self.down_levels):
            x = self._run(level, x, temb)
            skips.append(x)
            if i < len(self.downsamplers):
                x = self.downsamplers[i](x)
        x = self._run(self.mid, x, temb)
        for j, level in enumerate(self.up_levels):
            skip = skips.pop()
            if self.config.skip_connections:
                x = torch.cat([x, skip], dim=1)
            x = self._run(level, x, temb)
            if j < len(self.upsamplers):
                x = self.upsamplers[j](x)
        x = self.conv_out(F.silu(self.norm_out(x)))
        x = x[..., :h_in, :w_in]
        if not return_dict:
            return (x,)
        return LightUNet2DOutput(sample=x)
