"""The command-line tools as the installed package carries them: `neopolyp-predict`, `neopolyp-evaluate`,
`neopolyp-export` and `neopolyp-push` (train/*.py in a checkout run the same code)."""

from __future__ import annotations

from collections.abc import Callable

from ...atomic import exit_on_sigterm


def console_command(get_args_parser: Callable, main: Callable) -> Callable[[list[str] | None], int]:
    """A tool's entry point: SIGTERM and SIGHUP clean up as Ctrl-C does, then `main` runs on the parsed argv."""

    def run(argv: list[str] | None = None) -> int:
        exit_on_sigterm()
        main(get_args_parser().parse_args(argv))
        return 0

    return run
