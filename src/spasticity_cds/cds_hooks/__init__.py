"""CDS Hooks 2.0 service: wire models, prefetch, cards, feedback and client authentication."""
