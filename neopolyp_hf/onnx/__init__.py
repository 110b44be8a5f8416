"""ONNX Runtime backends (fp32 and INT8 graphs of a model): needs the `onnx` extra
(pip install 'neopolyp-hf[onnx]'); the `app` and `train` extras include it."""
