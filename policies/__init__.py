"""The platform's CrossGuard policy pack; rules live in ``policies.rules`` (importable, testable)."""
