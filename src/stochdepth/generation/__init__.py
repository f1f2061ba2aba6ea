"""Generation with a repeated layer: a key/value cache with a slot per repeat."""
