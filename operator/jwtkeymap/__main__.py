"""Allow ``python -m jwtkeymap``."""

from jwtkeymap.cli import main

main()
