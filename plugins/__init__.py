"""First-party harmonia plugins, registered directly by the core (``harmonia.registry.FIRST_PARTY_MODULES``)."""
