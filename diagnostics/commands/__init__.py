"""Subcommands of the `lisa` CLI, one module each (configure(parser), run(args) -> int)."""
