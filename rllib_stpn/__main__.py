"""``python -m rllib_stpn ...`` and the ``rllib`` console script (both call :func:`run`).

Ctrl-C is caught from the first statement on: while modules load and while Ray shuts down
after the command, it prints one line and exits with 130 instead of a KeyboardInterrupt
traceback. Inside the command, SIGINT raises KeyboardInterrupt as usual (Tune relies on it),
and ``rllib_stpn.cli.main`` turns that into one line and 130 too.
"""

import os
import signal


def _interrupted(signum: int, frame: object) -> None:
    os.write(2, b"rllib: interrupted\n")
    os._exit(130)


def run() -> None:
    """Entry point: the command's exit code, with Ctrl-C one line and 130 at any moment."""
    signal.signal(signal.SIGINT, _interrupted)
    from rllib_stpn.cli import main

    signal.signal(signal.SIGINT, signal.default_int_handler)
    code = main()
    signal.signal(signal.SIGINT, _interrupted)  # Ray's shutdown at exit
    raise SystemExit(code)


if __name__ == "__main__":
    run()
