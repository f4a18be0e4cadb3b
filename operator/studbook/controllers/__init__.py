"""kopf handlers: thin adapters from resource events to :mod:`studbook.breeding` and k8s."""
