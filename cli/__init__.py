"""The `gpux` command line: `cli.main` parses, each module runs a group of commands."""
