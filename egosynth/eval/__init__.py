"""Human-alignment evaluation."""
