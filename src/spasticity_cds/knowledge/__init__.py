"""Knowledge base: the cited data files and their strict loader."""
