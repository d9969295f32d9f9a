"""Tests of spasticity_cds.store."""
