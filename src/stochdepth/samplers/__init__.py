"""The depth samplers: the protocol, the built-ins, their draws and their registry."""
