"""The Python examples of the README and of the documentation site run as written, each on its own (a reader may
copy any one of them). Shell, text and output blocks are not run; every ```python block is."""

import os
import re
import subprocess
import sys

import pytest
from conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCKS = {
    f"{page.relative_to(ROOT)}:{index}": block
    for page in PAGES
    for index, block in enumerate(re.findall(r"^```python\n(.*?)^```", page.read_text(), flags=re.S | re.M))
}
# The blocks that read what `python export.py ... --output exported` or a finished `python train.py` writes.
NEEDS_ARTIFACTS = ('"exported"', '"checkpoints/default"')


def needs_artifacts(block: str) -> bool:
    return any(name in block for name in NEEDS_ARTIFACTS)


@pytest.fixture(scope="module")
def artifacts_folder(trained_workdir, tmp_path_factory):
    """A folder holding `exported/` (both formats) and `checkpoints/default`, as the examples expect."""
    folder = tmp_path_factory.mktemp("readme")
    result = subprocess.run([sys.executable, "export.py", "--workdir", str(trained_workdir), "--output",
                             str(folder / "exported"), "--format", "stablehlo,onnx"], cwd=ROOT, capture_output=True,
                            env={**os.environ, "JAX_PLATFORMS": "cpu"})  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "default").symlink_to(trained_workdir, target_is_directory=True)
    return folder


def test_the_readme_and_every_docs_section_have_their_examples():
    readme = [name for name in BLOCKS if name.startswith("README.md:")]
    assert len(readme) >= 2 and any(needs_artifacts(BLOCKS[name]) for name in readme)
    for page in ("library/cells", "library/layers", "library/streaming", "library/xlstm", "library/interop",
                 "deploy/export", "deploy/onnx", "job/predict"):  # fmt: skip
        assert any(name.startswith(f"docs/{page}.md:") for name in BLOCKS), page
    assert sum("onnxruntime" in block for block in BLOCKS.values()) == 1


@pytest.mark.parametrize("name", [name for name, block in BLOCKS.items() if not needs_artifacts(block)])
def test_each_library_example_runs_alone(name):
    exec(compile(BLOCKS[name], name, "exec"), {})


def test_the_onnx_examples_encoder_is_our_tokenizer():
    from lstm_jax.sentiment.tokenizer import TOKENIZERS, Vocabulary

    [block] = [block for block in BLOCKS.values() if "onnxruntime" in block]
    source = re.search(r"\ndef encode.*?\n\n", block, flags=re.S).group()
    texts = ["It\u2019s NOT bad<br />at all!! don\u00b4t `quote' o\u02bcneil", "a, b; c? d_e f'g'h " * 20, ""]
    for rules in TOKENIZERS:
        vocabulary = Vocabulary.fit(texts, 30, rules)
        namespace = {"re": re, "max_len": 12, "manifest": {"tokenizer": {"name": rules}},
                     "ids": {word: index + 2 for index, word in enumerate(vocabulary.words)}}  # fmt: skip
        exec(source, namespace)
        ids, lengths = vocabulary.encode(texts, 12)
        assert [namespace["encode"](text) for text in texts] == [list(row[:n]) for row, n in zip(ids, lengths)]


@pytest.mark.parametrize("name", [name for name, block in BLOCKS.items() if needs_artifacts(block)])
def test_each_deployment_example_runs_alone_in_a_fresh_process(name, artifacts_folder):
    block = BLOCKS[name]
    if "onnxruntime" in block:  # the ONNX example claims to need neither JAX nor lstm_jax: make both unimportable
        block = "import sys\nsys.modules['jax'] = sys.modules['lstm_jax'] = None\n" + block
    result = subprocess.run([sys.executable, "-c", block], cwd=artifacts_folder, capture_output=True, text=True,
                            env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert result.returncode == 0, result.stderr
    if "onnxruntime" in block:
        lines = result.stdout.splitlines()
        assert len(lines) == 2 and all(re.match(r"(positive|negative) \(0\.\d{3}\): ", line) for line in lines)
