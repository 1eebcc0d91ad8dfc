"""The README's Python examples run as written."""

import re

from conftest import ROOT


def test_readme_python_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    assert len(blocks) >= 2
    namespace = {}
    for block in blocks:  # later blocks reuse names from earlier ones, as a reader would
        exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["outputs"].shape == (4, 10, 64)
