"""metafs: a POSIX-like file system for machine-learning teams."""
