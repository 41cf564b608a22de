"""The docs match the code: flags, config keys, run files, checkpoint keys and links are read from
README.md and docs/*.md and checked against the code's own definitions (argparse parsers, the config
dataclasses, RUN_FILES, the Checkpoint fields), so a renamed flag or key fails here, not for a user."""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import re
import shlex
import typing
from dataclasses import dataclass
from pathlib import Path

import pytest

from retinanet.config import Config
from retinanet.engine.checkpoint import Checkpoint
from retinanet.engine.run_folder import RUN_FILES
from tests.helpers import REPO

PAGES = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md")])
SHELL_FENCES = ("bash", "sh", "")
NOT_RUN = re.compile(r"<!--\s*not run:\s*(.+?)\s*-->")


@dataclass(frozen=True)
class Command:
    """One shell command of a fenced block, continuation lines joined, its comment removed."""

    page: Path
    line: int
    text: str
    not_run: str | None  # the reason of a `<!-- not run: REASON -->` marker above the block

    @property
    def args(self) -> list[str]:
        return shlex.split(self.text)

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}: {self.text}"


def fenced_blocks(page: Path) -> list[tuple[int, str, str, str | None]]:
    """(first line number, language, body, not-run reason) of each fenced block of a page."""
    blocks, lines = [], page.read_text().splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("```"):
            language, start = lines[i][3:].strip(), i + 1
            end = next(j for j in range(start, len(lines)) if lines[j].startswith("```"))
            above = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            marker = NOT_RUN.search(above)
            blocks.append((start + 1, language, "\n".join(lines[start:end]), marker.group(1) if marker else None))
            i = end
        i += 1
    return blocks


def _strip_comment(line: str) -> str:
    """The command without its trailing `# comment` (a `#` inside quotes stays)."""
    in_quote: str | None = None
    for index, char in enumerate(line):
        if char in "\"'" and in_quote in (None, char):
            in_quote = None if in_quote else char
        elif char == "#" and in_quote is None and (index == 0 or line[index - 1].isspace()):
            return line[:index].strip()
    return line.strip()


def commands(page: Path) -> list[Command]:
    """The shell commands of a page's bash / sh / unlabelled fenced blocks (output blocks have no `$ ` or command)."""
    found = []
    for start, language, body, not_run in fenced_blocks(page):
        if language not in SHELL_FENCES:
            continue
        pending, first = "", start
        for offset, raw in enumerate(body.splitlines()):
            line = _strip_comment(raw) if not pending else raw.strip()
            if not pending:
                first = start + offset
            if line.endswith("\\"):
                pending += line[:-1].rstrip() + " "
                continue
            text = (pending + line).strip()
            pending = ""
            if text and _is_command(text):
                found.append(Command(page, first, _strip_comment(text), not_run))
    return found


def _is_command(text: str) -> bool:
    return text.split()[0] in ("python", "torchrun", "make", "pip", "tensorboard", "chromium", "apt-get", "cp", "ln")


def all_commands() -> list[Command]:
    return [command for page in PAGES for command in commands(page)]


# ----------------------------------------------------------------------------- entry points and their flags


def entry_point(args: list[str]) -> tuple[str, list[str]] | None:
    """(retinanet.cli module, its arguments) of `python train.py ...`, `python scripts/X.py ...`,
    `python -m retinanet.cli.X ...` or `torchrun [its flags] train.py ...`; None for anything else."""
    if args[0] == "python" and len(args) > 2 and args[1] == "-m" and args[2].startswith("retinanet.cli."):
        return args[2], args[3:]
    if args[0] not in ("python", "torchrun"):
        return None
    script = next((i for i, arg in enumerate(args) if arg.endswith(".py")), None)
    if script is None:
        return None
    path = Path(args[script])
    if path.parent.name not in ("", "scripts") or not (REPO / path).is_file():
        return None
    return f"retinanet.cli.{path.stem}", args[script + 1:]


class _Parsed(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


def parser_of(module: str, monkeypatch: pytest.MonkeyPatch) -> argparse.ArgumentParser:
    """The ArgumentParser the entry point builds, caught at its parse_args call (nothing else runs)."""
    def capture(self: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        raise _Parsed(self)

    with monkeypatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_args", capture)
        try:
            importlib.import_module(module).parse_args([])
        except _Parsed as parsed:
            return parsed.parser
    raise AssertionError(f"{module}.parse_args built no parser")


def test_every_entry_point_has_parse_args_and_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each script's module exposes parse_args (the checks below read its parser) and takes --debug."""
    scripts = ["train.py", "evaluate.py", *(f"scripts/{p.name}" for p in sorted((REPO / "scripts").glob("*.py")))]
    for script in scripts:
        module, _ = entry_point(["python", script])
        assert "--debug" in parser_of(module, monkeypatch)._option_string_actions, script


def test_every_documented_flag_exists(monkeypatch: pytest.MonkeyPatch) -> None:
    unknown = []
    for command in all_commands():
        found = entry_point(command.args)
        if found is None:
            continue
        module, args = found
        options = parser_of(module, monkeypatch)._option_string_actions
        unknown += [f"{command.where}  -> {arg}" for arg in args
                    if arg.startswith("--") and arg.split("=", 1)[0] not in options]
    assert not unknown, "flags that the entry point does not have:\n" + "\n".join(unknown)


# ----------------------------------------------------------------------------- config keys

SECTIONS = tuple(field.name for field in dataclasses.fields(Config))
KEY = re.compile(rf"^(?:{'|'.join(SECTIONS)})\.[a-z_][a-z0-9_.]*[a-z0-9_](?=$|[=:])")  # not `model.eval()`
MISSPELT = {"loss.gamm"}  # troubleshooting.md's example of the unknown-key error
FILE_SUFFIXES = (".log", ".json", ".jsonl", ".yaml", ".md", ".png", ".pt", ".py", ".html", ".onnx")


def config_keys(cls: type = Config, prefix: str = "") -> set[str]:
    """Every key of the config, from the dataclasses themselves: `model.backbone.frozen_stages`, ..."""
    keys = set()
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        name = f"{prefix}{field.name}"
        if dataclasses.is_dataclass(hints[field.name]):
            keys |= config_keys(hints[field.name], name + ".")
        else:
            keys.add(name)
    return keys


def documented_keys() -> list[tuple[str, str]]:
    """(where, key) for every config key a page names: in `code spans`, table cells and --set values."""
    found = []
    for page in PAGES:
        for number, line in enumerate(page.read_text().splitlines(), 1):
            spans = re.findall(r"`([^`]+)`", line)
            words = [w for span in spans for w in re.split(r"[\s,]+", span)]
            if "--set" in line:
                words += [w.strip("\"'") for w in line.split()]
            for word in words:
                match = KEY.match(word)
                if match and not word.endswith(FILE_SUFFIXES) and not match.group(0).endswith(FILE_SUFFIXES):
                    found.append((f"{page.relative_to(REPO)}:{number}", match.group(0)))
    return found


def test_every_documented_config_key_exists() -> None:
    keys = config_keys()
    assert "model.backbone.frozen_stages" in keys and "train.amp" in keys
    sections = {key.rsplit(".", 1)[0] for key in keys} | set(SECTIONS)
    unknown = [f"{where}: {key}" for where, key in documented_keys() if key not in keys | sections | MISSPELT]
    assert len(documented_keys()) > 100
    assert not unknown, "config keys that retinanet/config.py does not have:\n" + "\n".join(unknown)


# ----------------------------------------------------------------------------- run files and checkpoint keys

RUN_FOLDER = REPO / "docs" / "run_folder.md"


def table_names(page: Path, heading: str) -> set[str]:
    """The `code` names in the first column of the first table under `heading` (its header row left out)."""
    section = page.read_text().split(heading, 1)[1]
    rows = re.findall(r"^\|([^|\n]*)\|", section.split("\n## ", 1)[0], flags=re.M)[1:]
    return {name for cell in rows for name in re.findall(r"`([^`]+)`", cell)}


def test_run_folder_md_lists_every_run_file_and_only_those() -> None:
    documented = table_names(RUN_FOLDER, "# The run folder")
    assert documented == set(RUN_FILES), (
        f"written but not in docs/run_folder.md: {sorted(set(RUN_FILES) - documented)}; "
        f"documented but not written: {sorted(documented - set(RUN_FILES))}")


def test_run_folder_md_lists_every_checkpoint_key_and_only_those() -> None:
    documented = table_names(RUN_FOLDER, "## Checkpoints")
    fields = {field.name for field in dataclasses.fields(Checkpoint)}
    assert documented == fields, (
        f"Checkpoint fields not in docs/run_folder.md: {sorted(fields - documented)}; "
        f"documented but not fields: {sorted(documented - fields)}")


# ----------------------------------------------------------------------------- links

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def test_every_relative_link_resolves() -> None:
    broken = []
    for page in PAGES:
        for number, line in enumerate(page.read_text().splitlines(), 1):
            for target in LINK.findall(line):
                if re.match(r"^[a-z]+:", target) or target.startswith("#"):
                    continue
                if not (page.parent / target.split("#", 1)[0]).exists():
                    broken.append(f"{page.relative_to(REPO)}:{number}: {target}")
    assert not broken, "links to files that do not exist:\n" + "\n".join(broken)


def test_the_page_reader_finds_commands_and_markers(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("text\n\n<!-- not run: COCO data -->\n```bash\npython train.py --config c.yaml \\\n"
                    "    --set train.lr=0.1   # a comment\nmake demo\n```\n```python\nimport os\n```\n")
    found = commands(page)
    assert [(c.line, c.text, c.not_run) for c in found] == [
        (5, "python train.py --config c.yaml --set train.lr=0.1", "COCO data"), (7, "make demo", "COCO data")]
    assert entry_point(found[0].args) == ("retinanet.cli.train", ["--config", "c.yaml", "--set", "train.lr=0.1"])
    assert entry_point(shlex.split("torchrun --nproc_per_node 2 train.py --config c.yaml"))[1] == ["--config", "c.yaml"]


# ----------------------------------------------------------------------------- commands run as written

# Pages whose commands this file does not run, and why. Adding a page is deleting its line.
NOT_RUN_PAGES = {
    "deploy.md": "its export, predict and evaluate --model commands are the README's (tests/test_readme.py) and "
                 "tests/test_export.py runs each runtime; INT8 calibration and the benchmark take minutes",
    "multi_gpu.md": "torchrun on GPUs; tests/test_distributed.py runs the gloo path and test_gpu_check.py the GPU check",
    "own_data.md": "tests/test_own_data.py runs it on data/sample_roboflow and checks what it writes",
}
SCRATCH_SAMPLE = "_base_: {base}\ntrain:\n  max_iters: 4\n"  # the sample run, shortened: seconds, not a minute
QUIET_SERVERS = ("tensorboard",)  # never return: not run, as in test_readme


def runnable(command: Command) -> bool:
    return command.not_run is None and command.args[0] == "python" and command.page.name not in NOT_RUN_PAGES


def test_every_command_is_run_here_or_marked_with_a_reason() -> None:
    """A command that is not a plain `python ...` (make, torchrun, chromium) sits in a `<!-- not run: ... -->` block."""
    unmarked = [c.where for c in all_commands() if c.page.name not in NOT_RUN_PAGES and c.not_run is None
                and c.args[0] not in ("python", *QUIET_SERVERS)]
    assert not unmarked, "commands neither run here nor marked `<!-- not run: REASON -->`:\n" + "\n".join(unmarked)
    assert any(runnable(c) for c in all_commands())


def _scratch(folder: Path) -> Path:
    """A working folder like the repository root: its code and data linked, configs/sample.yaml shortened."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("data", "scripts", "train.py", "evaluate.py"):
        (folder / name).symlink_to(REPO / name)
    (folder / "configs").mkdir()
    for config in (REPO / "configs").glob("*.yaml"):
        (folder / "configs" / config.name).symlink_to(config)
    (folder / "configs" / "sample.yaml").unlink()
    (folder / "configs" / "sample.yaml").write_text(SCRATCH_SAMPLE.format(base=REPO / "configs" / "sample.yaml"))
    return folder


def _run(command: Command, cwd: Path) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, *command.args[1:]], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, f"{command.where}\n{result.stdout[-1500:]}\n{result.stderr[-1500:]}"


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """runs/sample as the quick start leaves it (trained on the shortened sample config), for pages that use it."""
    folder = _scratch(tmp_path_factory.mktemp("sample_run"))
    _run(Command(REPO / "README.md", 0, "python train.py --config configs/sample.yaml", None), folder)
    return folder / "runs" / "sample"


RUN_PAGES = sorted({c.page.name for c in all_commands() if runnable(c)})


@pytest.mark.slow
@pytest.mark.parametrize("page", RUN_PAGES)
def test_the_page_commands_run_as_written(page: str, sample_run: Path, tmp_path: Path) -> None:
    """Each runnable command of the page, in order, in a scratch folder; runs/sample is there unless the page trains it."""
    import shutil

    folder = _scratch(tmp_path / "work")
    todo = [c for c in all_commands() if c.page.name == page and runnable(c)]
    if todo[0].text != "python train.py --config configs/sample.yaml":
        shutil.copytree(sample_run, folder / "runs" / "sample", symlinks=True)
    for command in todo:
        _run(command, folder)
    if page == "run_folder.md":  # the run it trained writes every file the page lists, and each metrics.jsonl kind
        run = folder / "runs" / "sample"
        rewritten_only = {"checkpoints/last.prev.pt", "checkpoints/best.prev.pt"}  # a 4-iteration run writes each once
        assert {p for p in RUN_FILES if any(run.glob(p.rstrip("/")))} == set(RUN_FILES) - rewritten_only
        import json

        kinds = {json.loads(line)["kind"] for line in (run / "metrics.jsonl").read_text().splitlines()}
        assert kinds | {"plan"} == table_names(RUN_FOLDER, "## metrics.jsonl")  # plan: with train.time_budget only
