"""The sentiment job built on the recurrent library, in wings by stage; imports run one way, top to bottom.

Shared core (imported by every wing, imports no wing):

* ``errors.py``: the one-line errors every entry point reports; ``files.py``: atomic writes and bounded reads;
* ``config.py``: every setting, its meaning and its range (a leaf); ``tokenizer.py``: words -> ids;
* ``batching.py``: batch plans by length bucket; ``checkpoints.py``: saving, resuming and restoring by name.

Wings, lowest first:

* ``data/``: ``datasets.py`` (Rotten Tomatoes, IMDB, TFDS, your own files), ``vectors.py`` (PPMI-SVD, a
  vectors file, GloVe), ``subwords.py`` (character n-gram buckets);
* ``model/``: ``classifier.py`` (parts: embedder -> recurrent encoder -> pooling -> head), ``ngrams.py`` (the
  n-gram scorer beside it);
* ``train/``: ``trainer.py`` (train state, ``train_step`` / ``eval_step``, ``train_and_evaluate``),
  ``distributed.py`` (multi-process runs), ``reporting.py`` (metrics.jsonl, TensorBoard, curves);
* ``deploy/``: ``predictor.py`` (the one predictor and its loader, for a checkpoint or an exported folder),
  ``runners.py`` (what it runs, and the split over devices), ``predict.py`` (a checkpoint's model, ready to
  predict), ``statements.py`` (statements in, predictions out), ``export.py`` / ``onnx_graph.py`` (StableHLO,
  ONNX), ``artifacts.py`` (an exported folder, checked as untrusted input);
* ``serve/``: ``app.py`` (the HTTP service), ``server.py`` (uvicorn with per-connection bounds, the ``Host``
  and token guards, TLS, draining on signals), ``microbatch.py``, ``explain.py``, ``web/`` (the page);
* ``process/``: what the entry points share: ``startup.py`` (imported first), ``cli.py`` (flags, exit codes).

The library (``lstm_jax.cells``, ``xlstm``, ``registry``, ``recurrent``, ``fused``, ``cudnn``, ``interop``) never
imports this package; its benchmarks live in ``benchmarks/``.
"""
