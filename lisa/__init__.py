"""LISA: Layerwise Importance Sampled AdamW (Pan et al. 2024, arXiv 2403.17919)."""

__version__ = "0.1.0"

__all__ = ["__version__"]
