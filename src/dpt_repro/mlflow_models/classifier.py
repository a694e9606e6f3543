"""Classifier as an MLflow model: `predict(uint8 images [N, H, W, C])` returns class ids [N]."""

from __future__ import annotations

import warnings
from pathlib import Path

import mlflow
import numpy as np

# MLflow asks for type hints on predict; its supported hint types do not include image arrays.
warnings.filterwarnings("ignore", message=".*Add type hints to the `predict` method")


class ClassifierModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from dpt_repro.stages.classifier import load_classifier

        self.model, self.conf = load_classifier(Path(context.artifacts["model_dir"]), "classifier")

    def predict(self, context, model_input, params=None) -> np.ndarray:
        import torch

        from dpt_repro.ssl.train import predict_proba

        images = np.asarray(model_input, dtype=np.uint8)
        if images.ndim == 3:
            images = images[..., None]
        batch_size = int((params or {}).get("batch_size", 256))
        return predict_proba(self.model, images, batch_size, torch.device("cpu")).argmax(1).astype(np.int64)


mlflow.models.set_model(ClassifierModel())
