"""`af unpack`: not written yet (owned by the issue that delivers it)."""
