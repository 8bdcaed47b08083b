"""What every jaxseg command-line entry point shares: UserError -> one line on stderr and exit code 2."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

from jaxseg.errors import UserError


def run_cli(main: Callable[[list[str] | None], int | None]) -> Callable[[list[str] | None], int]:
    """Wrap an entry point: user mistakes print `jaxseg: error: ...` (no traceback) and give exit code 2."""

    @functools.wraps(main)
    def wrapped(argv: list[str] | None = None) -> int:
        try:
            return int(main(argv) or 0)
        except UserError as e:
            print(f"jaxseg: error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("jaxseg: interrupted", file=sys.stderr)
            return 130

    return wrapped
