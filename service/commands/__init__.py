"""The `resnet-serve` command line: serve, index, gate, healthcheck, finetune."""
