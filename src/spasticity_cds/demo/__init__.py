"""Bundled example patients that walk the treatment ladder."""
