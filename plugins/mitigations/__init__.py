"""First-party harmonia plugins, registered through the `harmonia` entry-point group."""
