"""``python -m diffcore``: the same command line as the ``diffcore`` script."""

from diffcore.cli import main

raise SystemExit(main())
