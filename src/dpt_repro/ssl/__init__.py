"""Semi-supervised classification: backbones, the algorithm registry and the shared training loop."""
