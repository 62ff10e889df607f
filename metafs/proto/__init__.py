"""Generated protocol code for proto/metafs.proto (regenerate with ``python -m metafs.proto.generate``)."""
