"""One module per ``edg`` sub-command; each defines ``register(subparsers)``."""
