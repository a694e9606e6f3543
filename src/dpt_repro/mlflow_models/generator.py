"""Generator as an MLflow model: `predict(class ids [N])` returns uint8 images [N, H, W, C].

Image i of a call is drawn with the seed `image_seed(seed, class, i)`, the rule the sample stage uses, so
`predict` with the stage's seed and a class's ids in order reproduces that class's generated images (in the
generator's precision, on the same kind of CPU).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import mlflow
import numpy as np

# MLflow asks for type hints on predict; its supported hint types do not include image arrays.
warnings.filterwarnings("ignore", message=".*Add type hints to the `predict` method")


class GeneratorModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from dpt_repro.stages.sample import load_generator, sampling_precision

        # A latent generator loads its autoencoder from where training.json names it (a folder or hub id).
        self.unet, self.scheduler_config, self.training, self.decode = load_generator(
            Path(context.artifacts["model_dir"]))
        self.mixed_precision = sampling_precision(self.training)

    def predict(self, context, model_input, params=None) -> np.ndarray:
        import torch

        from dpt_repro.diffusion.sample import guided_sample, image_seed

        params = params or {}
        labels = np.asarray(model_input, dtype=np.int64).reshape(-1)
        counts: dict[int, int] = {}
        seeds = []
        for c in labels.tolist():
            seeds.append(image_seed(int(params.get("seed", 0)), c, counts.get(c, 0)))
            counts[c] = counts.get(c, 0) + 1
        return guided_sample(self.unet, self.scheduler_config, torch.from_numpy(labels), seeds,
                             guidance_scale=float(params.get("guidance_scale", 1.5)),
                             steps=int(params.get("steps", 20)), null_class=self.training["null_class"],
                             scheduler=str(params.get("scheduler", "dpmsolver++")), device=torch.device("cpu"),
                             mixed_precision=self.mixed_precision, decode=self.decode)


mlflow.models.set_model(GeneratorModel())
