"""The operator CLI `killswitch`: parses, configures logging, calls a plain function."""

from killswitch.cli.main import main

__all__ = ["main"]
