"""Command-line error handling: user mistakes end in one line and a non-zero exit code."""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from retinanet.config import ConfigError
from retinanet.data.layouts import DataFolder, find_layout
from retinanet.data.validate import DatasetError
from retinanet.fileio import RunFileError
from retinanet.modeling.backbone import WeightsError

EXIT_USAGE = 2  # bad config or arguments
EXIT_FAILURE = 1  # bad data, checkpoint or a run that cannot go on


# Exceptions whose message is written for the user: one line, no traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    DatasetError, RunFileError, WeightsError, FileExistsError, FileNotFoundError, FloatingPointError, PermissionError,
)


DATA_HELP = ("a dataset folder: a Roboflow COCO export (train/ valid/ test/ with _annotations.coco.json), COCO 2017 "
             "(annotations/instances_{train,val}2017.json) or this repository's layout (like data/sample); fills "
             "data.train, data.val and data.test, and --set data.* still wins (docs/own_data.md)")


def add_data_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", metavar="DIR", help=DATA_HELP)


def with_data(data: str | None, overrides: list[str]) -> tuple[DataFolder | None, list[str]]:
    """The folder --data names and the config overrides: its split paths first, so the user's --set wins."""
    if data is None:
        return None, overrides
    folder = find_layout(data)
    print(folder.describe())
    return folder, [*folder.overrides(), *overrides]


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
