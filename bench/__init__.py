"""Benchmarks: memory and step time of LISA against FT, LoRA, BAdam and other switching schemes.

Run from the repository root as modules, e.g. ``python -m bench.memory_time --quick``; each
prints Markdown tables (see docs/benchmarks.md). Not installed with the package.
"""
