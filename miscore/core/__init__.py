"""The contract: data model, component bases, hook specs, plugin manager, registry, config."""
