"""Model presets: shapes of real models, to start from and edit (every value can be overridden by its flag / keyword).

Shapes and head counts are the models' own; where a model has no published sparse recipe the window / stride are an
example starting point, marked so in the description.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Preset:
    """``values`` are keyword arguments of the family's ``simulate_*`` function."""

    name: str
    family: str
    description: str
    values: dict[str, object] = field(default_factory=dict)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "flux-4k",
            "gna",
            "FLUX.1 at 4096x4096 px: 256x256 latent tokens, 24 heads x 128; window/stride an example start",
            {"shape": (256, 256), "window": (80, 80), "stride": (16, 16), "heads": 24, "head_dim": 128},
        ),
        Preset(
            "hunyuanvideo-720p",
            "gna",
            "HunyuanVideo 720p: 30x48x80 latent tokens (T x H x W), 24 heads x 128; window/stride an example start",
            {"shape": (30, 48, 80), "window": (18, 24, 24), "stride": (16, 8, 8), "heads": 24, "head_dim": 128},
        ),
        Preset(
            "deepseek-v3-decode",
            "latent",
            "DeepSeek-V3 MLA decode: 128 query heads, latent 512 + rope 64, 4096-token caches in pages of 64, batch 64",
            {"batch": 64, "kv_len": 4096, "q_len": 1, "heads": 128, "latent_dim": 512, "rope_dim": 64, "page_size": 64},
        ),
        Preset(
            "phi3-small-s2",
            "strided-shard",
            "Phi-3-small: 8192 tokens, 32 query / 8 KV heads x 128, blocks of 64, 16 local blocks, vertical stride 8, "
            "causal; dense attention every other layer (sparse_fraction 0.5)",
            {
                "seq_len": 8192,
                "block_size": 64,
                "local_blocks": 16,
                "vert_stride": 8,
                "heads": 32,
                "kv_heads": 8,
                "head_dim": 128,
                "causal": True,
                "sparse_fraction": 0.5,
            },
        ),
    )
}


def get_preset(name: str, family: str | None = None) -> Preset:
    """The preset ``name``; with ``family``, it must be a preset of that family."""
    if name not in PRESETS:
        raise ValueError(f"preset: unknown preset {name!r}; known: {', '.join(PRESETS)}")
    preset = PRESETS[name]
    if family is not None and preset.family != family:
        raise ValueError(f"preset: {name!r} is a {preset.family} preset, not {family}")
    return preset
