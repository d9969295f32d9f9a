"""Tests of spasticity_cds.knowledge."""
