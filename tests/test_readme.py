"""The README's Python example runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "the README has no Python example"
    namespace = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    assert namespace["arms"].shape == (1_000_000,)
    state = namespace["state"]
    assert float(state.best_fitness) > -0.5  # optimum 0 at x = 1, n = 3
    assert int(state.best_solution["n"]) == 3


def test_readme_commands_match_ci():
    text = README.read_text()
    ci = (README.parent / ".ci" / "run").read_text()
    test_command = 'pip install -e ".[dev]" && pytest -n 2 -q'
    assert test_command in text and test_command in ci
    assert "convergence-jax optimize examples/quickstart.yaml" in text
