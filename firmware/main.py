"""Node entry point: boards run it at boot; the unix port runs it with arguments (hal_unix)."""

from node.app import main

main()
