"""Conversion of a pretrained stack of layers into a shared RepeatedBlock (recursify)."""
