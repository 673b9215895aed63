"""Seeing inside the model: class activation maps, feature maps, kernels, the model card."""
