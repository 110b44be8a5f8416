"""ONNX Runtime backends (fp32 and INT8 graphs of a model): needs the `onnx` extra
(from a checkout: pip install '.[onnx]'); the `app` and `train` extras include it."""
