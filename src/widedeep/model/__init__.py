"""Pure model modules: the wide part, the deep part, and their joint model."""
