"""The runs behind the commands that detect over many inputs (``srn detect``, ``srn anonymize``):
which sources and sinks a run needs, where its outputs go, and the run loop
(:func:`srn.inference.loop.run`) that joins them."""
