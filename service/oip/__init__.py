"""The Open Inference Protocol (KServe v2, with Triton's extensions its clients use): a second
face of the same service, over REST (`/v2`) and gRPC, in front of the same pipeline."""
