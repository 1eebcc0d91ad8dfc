"""The tutorial's own program, in Keras 3 (JAX backend), on lstm_jax's default data (Rotten Tomatoes).

Embedding(25000, 32) -> LSTM(32) -> Dense(1, sigmoid); sequences padded/truncated to 100 tokens the Keras
way (pad_sequences: at the front); batch 32, Adam, binary cross-entropy, 5 epochs; prints the test
accuracy and saves the model. The texts are tokenized with lstm_jax's vocabulary (25,000 words), since
Keras 3 dropped the tutorial's ``Tokenizer``; both programs therefore see the same words.

python benchmarks/keras_tutorial.py --out /tmp/keras_model.keras
"""

import argparse
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from lstm_jax.sentiment.config import base_config  # noqa: E402
from lstm_jax.sentiment.data.datasets import load_splits  # noqa: E402
from lstm_jax.sentiment.tokenizer import Vocabulary  # noqa: E402


def sequences(vocabulary: Vocabulary, texts, max_len: int) -> np.ndarray:
    ids, lengths = vocabulary.encode(texts, 10_000)  # every token, then Keras pads/truncates as the tutorial did
    return keras.utils.pad_sequences([row[:n] for row, n in zip(ids, lengths)], maxlen=max_len)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="keras_tutorial_model.keras")
    args = parser.parse_args()
    config = base_config()  # the tutorial's settings: vocab 25000, max_len 100, batch 32, 5 epochs
    splits = load_splits(config)
    vocabulary = Vocabulary.fit(splits.train.texts, config.vocab_size)
    x_train, x_val, x_test = (sequences(vocabulary, s.texts, config.max_len)
                              for s in (splits.train, splits.validation, splits.test))  # fmt: skip
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((config.max_len,), dtype="int32"),
        keras.layers.Embedding(config.vocab_size, 32),
        keras.layers.LSTM(32),
        keras.layers.Dense(1, activation="sigmoid"),
    ])  # fmt: skip
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    model.fit(x_train, splits.train.labels, batch_size=32, epochs=5, validation_data=(x_val, splits.validation.labels),
              verbose=2)  # fmt: skip
    _, accuracy = model.evaluate(x_test, splits.test.labels, verbose=0)
    print(f"Accuracy: {100 * accuracy:.2f}%")
    model.save(args.out)


if __name__ == "__main__":
    main()
