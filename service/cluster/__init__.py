"""The service on a Ray cluster (Ray Serve): the same app, model host and index as
`resnet-serve serve`, as three deployments. Ray is imported only here."""
