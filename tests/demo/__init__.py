"""Tests of spasticity_cds.demo."""
