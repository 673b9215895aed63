"""How a request reaches a model or an index in another process: the operations each host
answers (declared once), the Unix-socket RPC with its shared-memory pixel slots, the Ray
Serve link, and the remote clients that speak them. Where processes run is not decided here
(service.workers: the supervisor; service.cluster: the Ray deployments)."""
