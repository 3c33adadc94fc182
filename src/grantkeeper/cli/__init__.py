"""The ``grantkeeper`` command line (``grantkeeper.cli.main:main``; also ``python -m grantkeeper``).

Commands are thin: parse, call the `Keeper` / store API, print. Errors become exit codes at one boundary
(`grantkeeper.cli.main.GrantkeeperGroup.main`); the table is in docs/cli.md. Importing this package does not
import Click or Rich: `import grantkeeper` stays free of CLI dependencies.
"""

__all__: list[str] = []
