"""The composition root: the ``uait`` command, the processes it starts, and ``uait dev``.

Everything is put together here from the context registry (``contexts.REGISTRY``); the layers
below take what they need as arguments.
"""
