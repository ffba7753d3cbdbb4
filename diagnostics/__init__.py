"""Diagnostics for LISA: per-layer norms, skew analysis, policy derivation and plots."""

__all__: list[str] = []
