"""Plain nn.Module models: the video ViT encoder, rotary embeddings, predictor, probe heads (loaded on first use)."""

from worldmodel._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(
        ("VideoViT", "VideoViTConfig", "build_vit", "vit_tiny", "vit_small", "vit_base", "vit_large", "vit_huge",
         "vit_giant"),
        "worldmodel.models.vit",
    ),
    "Predictor": "worldmodel.models.predictor",
    "Rope3D": "worldmodel.models.rope",
    **dict.fromkeys(("AttentiveProbe", "LinearProbe", "build_probe"), "worldmodel.models.probe"),
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
