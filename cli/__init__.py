"""The ``fuxi`` command line (typer), one module per command group."""
