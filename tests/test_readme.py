"""The README's Python examples run as written, each on its own (a reader may copy any one of them)."""

import os
import re
import subprocess
import sys

import pytest
from conftest import ROOT

BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
NEEDS_EXPORT = '"exported"'  # the blocks that read the folder `python export.py ... --output exported` writes


@pytest.fixture(scope="module")
def exported_folder(trained_workdir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("readme")
    result = subprocess.run([sys.executable, "export.py", "--workdir", str(trained_workdir), "--output",
                             str(folder / "exported"), "--format", "stablehlo,onnx"], cwd=ROOT, capture_output=True,
                            env={**os.environ, "JAX_PLATFORMS": "cpu"})  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    return folder


def test_the_readme_has_its_examples():
    assert len(BLOCKS) >= 6 and sum(NEEDS_EXPORT in block for block in BLOCKS) == 2


@pytest.mark.parametrize("index", [i for i, block in enumerate(BLOCKS) if NEEDS_EXPORT not in block])
def test_each_library_example_runs_alone(index):
    namespace = {}
    exec(compile(BLOCKS[index], f"README.md python block {index}", "exec"), namespace)
    if index == 0:
        assert namespace["outputs"].shape == (4, 10, 64)


def test_the_onnx_examples_encoder_is_our_tokenizer():
    from lstm_jax.sentiment.tokenizer import TOKENIZERS, Vocabulary

    [block] = [block for block in BLOCKS if "onnxruntime" in block]
    source = re.search(r"\ndef encode.*?\n\n", block, flags=re.S).group()
    texts = ["It\u2019s NOT bad<br />at all!! don\u00b4t `quote' o\u02bcneil", "a, b; c? d_e f'g'h " * 20, ""]
    for rules in TOKENIZERS:
        vocabulary = Vocabulary.fit(texts, 30, rules)
        namespace = {"re": re, "max_len": 12, "manifest": {"tokenizer": {"name": rules}},
                     "ids": {word: index + 2 for index, word in enumerate(vocabulary.words)}}  # fmt: skip
        exec(source, namespace)
        ids, lengths = vocabulary.encode(texts, 12)
        assert [namespace["encode"](text) for text in texts] == [list(row[:n]) for row, n in zip(ids, lengths)]


@pytest.mark.parametrize("index", [i for i, block in enumerate(BLOCKS) if NEEDS_EXPORT in block])
def test_each_deployment_example_runs_alone_in_a_fresh_process(index, exported_folder):
    block = BLOCKS[index]
    if "onnxruntime" in block:  # the ONNX example claims to need neither JAX nor lstm_jax: make both unimportable
        block = "import sys\nsys.modules['jax'] = sys.modules['lstm_jax'] = None\n" + block
    result = subprocess.run([sys.executable, "-c", block], cwd=exported_folder, capture_output=True, text=True,
                            env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert result.returncode == 0, result.stderr
    if "onnxruntime" in block:
        lines = result.stdout.splitlines()
        assert len(lines) == 2 and all(re.match(r"(positive|negative) \(0\.\d{3}\): ", line) for line in lines)
