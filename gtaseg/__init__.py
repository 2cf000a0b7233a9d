"""gtaseg: fine-tune Vision Transformers with Guided Transfer of spatial Attention (GTA)."""

__version__ = "0.1.0"
