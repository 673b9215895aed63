"""What crosses to and from the model: its inputs and one forward pass's outputs.

numpy only, so the processes that send and receive them (HTTP workers, the index worker)
never load torch.
"""

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from service.errors import InvalidInput
from service.model.jpeg_upload import JpegUpload


@dataclass(frozen=True)
class ModelOutputs:
    """What one forward pass gives: for a batch (leading axis n), or for one image (no axis).

    The one type for a forward pass's outputs, from backend to batcher, cache and routes.
    """

    probabilities: np.ndarray  # (n, num_classes) or (num_classes,) float32, rows sum to 1
    embedding: np.ndarray  # (n, embedding_dim) or (embedding_dim,) float32, unit length

    def rows(self) -> Iterator["ModelOutputs"]:
        """One ModelOutputs per image of a batch."""
        for probabilities, embedding in zip(self.probabilities, self.embedding, strict=True):
            yield ModelOutputs(probabilities, embedding)


# What the batcher carries to the model: host-decoded pixels, or a JPEG for the device.
ModelInput = np.ndarray | JpegUpload
# Per image: its outputs, or why its JPEG did not decode on the device (its request: 422).
ModelResult = ModelOutputs | InvalidInput
