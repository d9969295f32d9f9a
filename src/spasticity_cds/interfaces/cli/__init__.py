"""The spasticity-cds command line."""
