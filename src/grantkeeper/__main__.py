"""``python -m grantkeeper``: the command line (see `grantkeeper.cli.main`)."""

from grantkeeper.cli.main import main

# Guarded: the demo's "spawn" workers re-import the parent's __main__ module and must not start the CLI again.
if __name__ == "__main__":
    raise SystemExit(main())
