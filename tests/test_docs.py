"""The docs' code runs: the plugin tutorial's module is a working plugin, the README's example works."""

import re
from pathlib import Path

import torch

import sdekit
from sdekit.metrics import sliced_wasserstein
from sdekit.registry import load_registry

DOCS = Path(__file__).resolve().parents[1] / "docs"
README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(path):
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def test_plugin_tutorial_module_is_a_working_plugin(tmp_path, exact):
    src = python_blocks(DOCS / "plugins.md")[0]
    path = tmp_path / "my_sampler.py"
    path.write_text(src)
    reg = load_registry(plugins=[str(path)], autoload=False, strict=True)
    assert reg.owner("my_euler") == str(path)
    gmm, ref, floor = exact("ring8")
    sde = sdekit.VPSDE()
    out = sdekit.sample(gmm.score_fn(sde), sde, ref.shape, "my_euler", steps=200, registry=reg).samples
    assert sliced_wasserstein(out, ref) < 2.0 * floor


def test_readme_python_example_runs(capsys):
    exec(compile(python_blocks(README)[0], "README.md", "exec"), {})
    out = capsys.readouterr().out.split("\n")
    assert int(out[0].split()[0]) == 1000  # pc: 500 steps x (predictor + corrector)
    assert float(out[1]) < 0.15  # sliced Wasserstein to exact samples (noise floor ~0.05 at n=2000)


# -- every code block of the docs and the README runs (or, for long jobs, parses) ----------------

import shlex
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

from sdekit.cli import main as cli

ROOT = DOCS.parent
DOC_FILES = [README, *sorted(DOCS.glob("*.md"))]


def fenced(path, lang):
    return re.findall(rf"^```{lang}\n(.*?)^```", path.read_text(), flags=re.S | re.M)


def command_lines(block):
    """Shell lines of a block, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", block)
    return [shlex.split(line, comments=True) for line in text.splitlines() if line.strip()]


def sdekit_args(argv):
    """The arguments after ``sdekit`` (or ``torchrun ... -m sdekit.cli``), or None for other programs."""
    if argv and argv[0] == "sdekit":
        return argv[1:]
    if argv and argv[0] == "torchrun" and "sdekit.cli" in argv:
        return argv[argv.index("sdekit.cli") + 1:]
    return None


def runs_quickly(args):
    """Listings, and sampling or scoring the exact oracle with no input files: run them for real."""
    command = next((a for a in args if not a.startswith("-")), None)
    if command in ("samplers", "plugins"):
        return True
    uses_files = {"--image", "--inpaint", "--colorize", "--ckpt", "--data"} & set(args)
    return command in ("sample", "likelihood") and "--model" in args and not uses_files


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """A scratch working directory that sees the repository's configs/."""
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    monkeypatch.chdir(tmp_path)
    return tmp_path


SHELL = [(path, i, args) for path in DOC_FILES for i, block in enumerate(fenced(path, "bash"))
         for args in map(sdekit_args, command_lines(block)) if args is not None]


@pytest.mark.parametrize("path, block, args", SHELL,
                         ids=[f"{p.name}:{i}:{' '.join(a)[:60]}" for p, i, a in SHELL])
def test_every_shell_command_in_the_docs_is_valid(path, block, args, sandbox):
    """Quick commands run as written; long ones (training, checkpoints the docs assume) must parse:
    their command and every option exist (``--help`` exits before any work, after the parser has
    rejected unknown options)."""
    if runs_quickly(args):
        extra = ["--overwrite"] if "sample" in args and "--overwrite" not in args else []
        result = CliRunner().invoke(cli, [*args, *extra])
    else:
        result = CliRunner().invoke(cli, [*args, "--help"])
    assert result.exit_code == 0, f"{path.name}: sdekit {' '.join(args)}\n{result.output}"


def _pattern(expected):
    """A line of expected output: '...' matches anything, numbers match any number."""
    parts = re.split(r"(\.\.\.|-?\d+(?:\.\d+)?(?:e[-+]?\d+)?)", expected.strip())
    regex = "".join(".*" if p == "..." else r"-?[\d.]+(?:e[-+]?\d+)?" if re.fullmatch(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?", p)
                    else re.escape(p) for p in parts if p)
    return re.compile(regex)


CONSOLE = [(path, i, block) for path in DOC_FILES for i, block in enumerate(fenced(path, "console"))]


@pytest.mark.parametrize("path, index, block", CONSOLE, ids=[f"{p.name}:{i}" for p, i, _ in CONSOLE])
def test_console_examples_print_what_the_docs_show(path, index, block, sandbox):
    sessions, current = [], None
    for line in block.splitlines():
        if line.startswith("$ "):
            current = (shlex.split(line[2:], comments=True), [])
            sessions.append(current)
        elif line.strip():
            current[1].append(line)
    for argv, expected in sessions:
        args = sdekit_args(argv)
        assert args is not None, f"{path.name}: only sdekit commands in console blocks: {argv}"
        extra = ["--overwrite"] if "sample" in args and "--overwrite" not in args else []
        result = CliRunner().invoke(cli, [*args, *extra])
        errors = any(line.startswith("Error:") for line in expected)
        assert result.exit_code == (2 if errors else 0), result.output
        actual = result.output.splitlines()
        for want in expected:
            assert any(_pattern(want).fullmatch(got.strip()) for got in actual), \
                f"{path.name}: '{want}' not in the output of sdekit {' '.join(args)}:\n{result.output}"


PYTHON = [path for path in DOC_FILES if fenced(path, "python")]


@pytest.mark.parametrize("path", PYTHON, ids=[p.name for p in PYTHON])
def test_every_python_block_runs(path, sandbox):
    """The blocks of one page run in order in one namespace, as a reader would paste them."""
    namespace = {"__name__": f"docs_{path.stem}"}
    blocks = fenced(path, "python")
    ran = 0
    for i, source in enumerate(blocks):
        exec(compile(source, f"{path.name} (python block {i})", "exec"), namespace)  # raises if the block fails
        ran += 1
    assert ran == len(blocks) > 0 and len(namespace) > 2  # every block ran and defined something


def test_the_site_builds_without_warnings(tmp_path):
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent))
    assert mkdocs is not None, "mkdocs is not installed: pip install -e '.[docs]' (make test does)"
    done = subprocess.run([mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    reference = (tmp_path / "site" / "cli-reference" / "index.html").read_text()
    for command in ("train", "sample", "likelihood", "eval", "samplers", "plugins"):
        assert f"sdekit {command}" in reference  # generated from the click commands


def test_cli_md_option_tables_list_exactly_each_commands_options():
    """docs/cli.md explains options beyond --help; its tables must name exactly the real options."""
    import click

    sections = re.split(r"^## `sdekit ([a-z ]+?)[ `]", (DOCS / "cli.md").read_text(), flags=re.M)
    documented = {}
    for name, body in zip(sections[1::2], sections[2::2]):
        rows = [line.split("|")[1] for line in body.splitlines() if line.startswith("| `-")]
        if rows:
            documented[name] = {opt for cell in rows for opt in re.findall(r"(?<![\w-])(--?[a-z][-\w]*)", cell)}
    assert {"sample", "train"} <= set(documented)
    for name, opts in documented.items():
        command = cli
        for part in name.split():
            command = command.commands[part]
        real = {o for p in command.params if isinstance(p, click.Option) for o in (*p.opts, *p.secondary_opts)}
        real -= {"--help", "-h"}
        assert opts == real, f"sdekit {name}: documented but not real {sorted(opts - real)}, " \
                             f"real but not documented {sorted(real - opts)}"
