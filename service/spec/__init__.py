"""Job specification: one pydantic model per section; defaults live here."""
