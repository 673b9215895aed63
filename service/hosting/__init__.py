"""The model seam: what the pipeline and the versions manager hold (`ModelClient`, with the
status and the refusal memory its clients share), the host that sets a model up and serves
it in this process (`ModelHost`, `InProcessModel`), and what a host answers to a client in
another process (`HostedModel`). The model itself (runtime, backends, the backend search) is
service.model; how another process is reached is service.transport."""
