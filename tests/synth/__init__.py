"""Tests of spasticity_cds.synth."""
