"""Our TorchServe handler for the ResNet50 classifier and the code it runs inside the worker."""
