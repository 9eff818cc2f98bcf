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
