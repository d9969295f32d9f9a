"""Tests of spasticity_cds.fhir."""
