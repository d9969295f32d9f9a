"""Tests of spasticity_cds.engine."""
