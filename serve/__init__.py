"""pytorch-byoc serving toolkit: the `serve` launcher and the TorchServe handler."""
