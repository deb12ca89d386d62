"""Allow ``python -m jwtkeymap``."""

from jwtkeymap.cli.main import main

main()
