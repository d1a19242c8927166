"""The FastAPI gateway in front of TorchServe: auth, validation, response shaping. No torch here."""
