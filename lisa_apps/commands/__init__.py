"""Subcommands of the `lisa` CLI, one module each: configure(parser) and prepare(args) -> work."""
