"""The embedded default: the breeding pipeline on one machine, without a cluster."""
