"""Build the ResNet50 model archive and run TorchServe with it (`python -m modelserver --help`)."""
