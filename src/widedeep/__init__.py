"""widedeep."""
