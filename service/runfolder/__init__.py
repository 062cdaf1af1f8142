"""The run folder's one owner: its layout, records, lock and ownership."""
