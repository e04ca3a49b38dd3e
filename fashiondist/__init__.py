"""fashiondist: small-image classification from a CSV to a scored submission, on a laptop or a GPU cluster."""

__version__ = "0.1.0"
