"""The ``jwtkeymap`` command line: one module per command family, loaded on demand.

``main`` holds the root group; ``context`` the global options and the command
classes every subcommand is built from; ``errors`` the one translation of core
errors into one-line failures; ``output`` the table formatting.
"""
