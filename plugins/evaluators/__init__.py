"""First-party evaluator plugins, registered directly by the core (``harmonia.registry.FIRST_PARTY_MODULES``)."""
