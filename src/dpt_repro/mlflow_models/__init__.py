"""MLflow pyfunc wrappers, logged as "models from code": MLflow stores these files, not a pickled object.

Each file defines one `PythonModel` and hands it to `mlflow.models.set_model`; the weights travel as the
model's artifacts (safetensors / diffusers folders) and are rebuilt from their saved configs at load time.
"""
