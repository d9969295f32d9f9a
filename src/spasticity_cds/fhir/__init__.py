"""FHIR input: parse the shapes records arrive in and index one patient."""
