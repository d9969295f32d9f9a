"""The web surface: one FastAPI app serving the clinician pages, the JSON API and the CDS Hooks routes."""
