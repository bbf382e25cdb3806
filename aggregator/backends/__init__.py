"""tallyd."""
