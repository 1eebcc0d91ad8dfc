"""The sentiment job built on the recurrent library: one concern per file.

* ``config.py``: every setting, its meaning, and the rules on them (validation, what a resume may change);
* ``data.py``: data sources (Rotten Tomatoes, IMDB, TFDS, your own files) -> train/validation/test texts;
* ``tokenizer.py``: the words -> ids vocabulary, saved in every checkpoint;
* ``embeddings.py``: word vectors to initialise the embeddings (PPMI-SVD of the training texts, a file, GloVe);
* ``model.py``: the classifier (embedding -> recurrent encoder -> pooling -> logit) and the ensemble;
* ``batching.py``: the one batcher (batch plans by length bucket; the gather inside the jitted steps);
* ``train.py``: the train state, ``train_step`` / ``eval_step``, and ``train_and_evaluate``;
* ``distributed.py``: joining a multi-process run (a handshake first, then ``jax.distributed``);
* ``checkpoints.py``: saving, resuming and restoring by name;
* ``reporting.py``: metrics.jsonl, TensorBoard, the training-curves PNG;
* ``predict.py``: ``load_predictor`` (a checkpoint's model, ready to predict);
* ``statements.py``: statements in, predictions out (``predict_file``), for a checkpoint or an exported model;
* ``export.py`` / ``onnx_graph.py``: a trained model as a self-contained folder (StableHLO, ONNX);
* ``deploy.py``: loading that folder and predicting without Flax or orbax (``lstm_jax.deploy``);
* ``serving.py`` / ``microbatch.py`` / ``explain.py`` / ``web/``: the HTTP service (``serve.py``), its
  micro-batcher, the per-word contributions and the page;
* ``cli.py`` / ``errors.py`` / ``startup.py`` / ``files.py``: what the command-line entry points share.

The library's benchmarks live in ``benchmarks/`` (``step_speed.py``: our recurrences against Flax and PyTorch).

The library (``lstm_jax.cells``, ``xlstm``, ``registry``, ``recurrent``, ``fused``, ``cudnn``, ``interop``) never
imports this package.
"""
