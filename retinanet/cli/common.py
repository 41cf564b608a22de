"""Command-line error handling: user mistakes end in one line and a non-zero exit code."""
from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from retinanet.config import ConfigError
from retinanet.data.validate import DatasetError
from retinanet.fileio import RunFileError
from retinanet.modeling.backbone import WeightsError

EXIT_USAGE = 2  # bad config or arguments
EXIT_FAILURE = 1  # bad data, checkpoint or a run that cannot go on


# Exceptions whose message is written for the user: one line, no traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    DatasetError, RunFileError, WeightsError, FileExistsError, FileNotFoundError, FloatingPointError, PermissionError,
)


class TqdmHandler(logging.Handler):
    """Console log lines that do not break a running tqdm progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        tqdm.write(self.format(record), file=sys.stderr)


def run_cli(main: Callable[[], int]) -> int:
    """Run a CLI main(); print `error: <message>` instead of a traceback unless --debug is given."""
    debug = "--debug" in sys.argv
    handler = TqdmHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        return main()
    except ConfigError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except USER_ERRORS as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
