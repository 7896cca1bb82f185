"""The language of the system: commands, events, the envelope, topics and serialisation.

Each context's messages live in its own subpackage (``events/<context>/``) and are known to
``events.base.load`` once imported; the context registry (``contexts``) imports them all.
"""
