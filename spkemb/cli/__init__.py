"""The Typer app: one module per subcommand, each thin over the core."""
