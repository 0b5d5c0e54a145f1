"""Command-line sub-commands. Each module has ``register(subparsers)``; heavy imports stay inside ``run``."""
