"""Lightning training of a generator: the LightningModule, callbacks, checkpoint format, resume."""
