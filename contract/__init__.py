"""What the gateway and the TorchServe side share, standard library only, so that every side carries it
without the others' dependencies: the gateway image and the serve image install it (both Dockerfiles), and
the model archive carries it beside handlers/ (modelserver/archive.py), for the worker imports it from there.

- contract/wire.py: the model's name and sizes, the request headers the gateway sends the handler, and the
  handler's answers as TypedDicts.
- contract/formats.py: the accepted image formats, their magic bytes and file suffixes.
- contract/bounds.py: what one image may cost to decode, checked by the gateway and again by the handler.
- contract/torchserve_tokens.py: TorchServe's token keys: reading its key file, deciding a recovery.
"""
