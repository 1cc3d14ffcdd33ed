"""``python -m rllib_stpn ...`` is the ``rllib`` command."""

from rllib_stpn.cli import main

raise SystemExit(main())
