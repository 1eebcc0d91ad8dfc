"""The package's floor plan: no import cycle, and the recurrent library never imports the sentiment job."""

import ast
from pathlib import Path

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


def test_every_config_is_locked_and_valid_and_vocab16k_and_glove_are_the_default_with_their_changes():
    import pytest
    from conftest import load_config

    from lstm_jax.sentiment.config import validate
    from lstm_jax.sentiment.errors import UserError

    names = sorted(path.stem for path in (ROOT / "configs").glob("*.py") if path.stem != "__init__")
    assert {"default", "glove", "seed", "smoke", "vocab16k"} <= set(names)
    for name in names:
        config = load_config(name)
        try:
            validate(config)
        except UserError as error:  # without the [vectors] extra (as in CI) glove.py is refused, saying why
            assert name in ("glove", "glove_all") and "pip install 'lstm_jax[vectors]'" in str(error), (name, error)
        with pytest.raises(AttributeError):
            config.no_such_key = 1  # locked: a misspelt override fails instead of being ignored
    # README: configs/vocab16k.py = configs/default.py, 16,000 words, word dropout 0.4, the plain shuffled batches
    want = load_config("default", vocab_size=16000, word_dropout_rate=0.4, length_pool=0, train_length_bucket=0)
    assert load_config("vocab16k").to_dict() == want.to_dict()
    # README: configs/glove.py = configs/default.py with GloVe (50-d), every training word (up to 20,000) + 100,000
    # words, the moving average, recurrent dropout, subwords in 2^17 buckets, the static channel, a recurrent state
    # of 128 and output dropout 0.2
    want = load_config("default", embedding_init="glove", embedding_dim=50, vocab_size=20000, vectors_vocab=100000,
                       ema_decay=0.99, recurrent_dropout_rate=0.25, subword_buckets=1 << 17, static_embeddings=True,
                       hidden_size=128, dropout_rate=0.2)
    assert load_config("glove").to_dict() == want.to_dict()
    # README: configs/glove_all.py = configs/glove.py on train + validation for 5 epochs, nothing held out
    want = load_config("glove", validation_fraction=0.0, early_stopping_patience=0, num_epochs=5)
    assert load_config("glove_all").to_dict() == want.to_dict()
