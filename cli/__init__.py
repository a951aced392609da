"""volseg's command-line front end: parsing, progress display, errors to exit codes."""
