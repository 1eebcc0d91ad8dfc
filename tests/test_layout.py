"""The package's floor plan: no import cycle, and the recurrent library never imports the sentiment job."""

import ast
from pathlib import Path

import pytest
from conftest import ROOT

PACKAGE = ROOT / "lstm_jax"
# Conveniences that expose a job feature under a short library name (lazily, or as a one-line re-export).
JOB_SHORTCUTS = {"lstm_jax", "lstm_jax.deploy"}


def _module(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def import_graph() -> dict[str, set[str]]:
    """Module -> the lstm_jax modules it imports at its top level (imports inside functions are lazy)."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        imported = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lstm_jax"):
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names if alias.name.startswith("lstm_jax")}
        graph[_module(path)] = imported
    return graph


def test_no_import_cycle_in_the_package():
    graph = import_graph()
    state = {}

    def visit(module, trail):
        if state.get(module) == "done":
            return
        assert state.get(module) != "open", f"import cycle: {' -> '.join(trail + [module])}"
        state[module] = "open"
        for name in graph.get(module, ()):
            # "from lstm_jax import cudnn" imports the submodule, not the package's __init__
            visit(name, trail + [module])
        state[module] = "done"

    for module in graph:
        visit(module, [])


def test_the_library_imports_nothing_from_the_job():
    for module, imported in import_graph().items():
        if module.startswith("lstm_jax.sentiment") or module in JOB_SHORTCUTS:
            continue
        assert not [name for name in imported if name.startswith("lstm_jax.sentiment")], module


def test_nothing_that_benchmarks_the_library_lives_in_the_job():
    assert not [path.name for path in (PACKAGE / "sentiment").glob("*bench*")]
    assert (ROOT / "benchmarks" / "step_speed.py").is_file()


def test_every_config_is_locked_and_valid():
    import pytest
    from conftest import load_config

    from lstm_jax.sentiment.errors import UserError
    from lstm_jax.sentiment.train.trainer import check_settings

    names = sorted(path.stem for path in (ROOT / "configs").glob("*.py") if path.stem != "__init__")
    assert {"default", "glove", "seed", "smoke", "vocab16k"} <= set(names)
    for name in names:
        config = load_config(name)
        try:
            check_settings(config)
        except UserError as error:  # without the [vectors] extra (as in CI) glove.py is refused, saying why
            assert name in ("glove", "glove_all") and "pip install 'lstm_jax[vectors]'" in str(error), (name, error)
        with pytest.raises(AttributeError):
            config.no_such_key = 1  # locked: a misspelt override fails instead of being ignored


SHIPPED = sorted(path.stem for path in (ROOT / "configs").glob("*.py") if path.stem != "__init__")


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_config_trains_on_smoke_data_and_predicts(name, review_files, tmp_path):
    """Each configs/*.py as it is (its model, vectors, tables and schedule), on the tiny review files for one
    epoch: it validates, trains, tests and its checkpoint predicts. GloVe configs read a GloVe-shaped folder of
    a few 50-d vectors, as the package would give."""
    from conftest import load_config
    from test_word_vectors import write_glove_package

    from lstm_jax.sentiment.deploy.predict import load_predictor
    from lstm_jax.sentiment.train.trainer import train_and_evaluate

    train, test = review_files
    config = load_config(name, dataset="files", train_path=str(train), test_path=str(test), num_epochs=1,
                         tensorboard=False)  # fmt: skip
    if config.embedding_init == "glove":
        width = config.embedding_dim
        lines = [f"{word} " + " ".join(f"{(index + k) % 7 / 7:.3f}" for k in range(width))
                 for index, word in enumerate(["movie", "great", "dull", "film", "zebra", "quokka"])]  # fmt: skip
        config.embedding_path = str(write_glove_package(tmp_path / "glove", lines, dim=width))
    final = train_and_evaluate(config, tmp_path / "run")
    assert 0.0 <= final["test_accuracy"] <= 1.0
    probabilities = load_predictor(tmp_path / "run").predict(["a great movie", "dull"])
    assert probabilities.shape == (2,) and ((probabilities > 0) & (probabilities < 1)).all()


def test_exported_models_load_and_serve_without_the_jobs_dependencies():
    """`pip install ".[onnx]"` or `".[serve]"` holds no training stack: loading an export and the service's code must
    not import it (ml_collections once came in through the settings table)."""
    import subprocess
    import sys

    blocked = ["ml_collections", "optax", "orbax", "orbax.checkpoint", "tqdm", "matplotlib", "tensorboardX"]
    code = (f"import sys\nfor name in {blocked!r}: sys.modules[name] = None\n"
            "import lstm_jax.deploy, lstm_jax.sentiment.serve.app, lstm_jax.sentiment.process.cli\n")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
