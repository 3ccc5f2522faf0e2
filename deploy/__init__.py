"""Build and run tooling for the container images (not part of the installed package)."""
