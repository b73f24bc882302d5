"""Thin ClientApp handlers: unpack a Message, call the core, pack the reply."""
