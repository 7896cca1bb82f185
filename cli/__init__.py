"""The command line's command groups (the ``uait`` root that assembles them is ``uait.main``)."""
