"""resnet-serve: image classification and embeddings over HTTP."""
