"""worldmodel: self-supervised video world models (latent JEPA) with Lightning."""

__version__ = "0.1.0"
