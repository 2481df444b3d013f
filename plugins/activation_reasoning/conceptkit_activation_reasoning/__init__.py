"""ActivationReasoning: concept dictionaries, detection, rules and steering from conclusions."""
