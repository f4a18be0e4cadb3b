"""Pure domain logic of breeding: admission, compatibility, budgets, lineage, recipes, gates.

Nothing here performs I/O; it imports only :mod:`studbook.api`.
"""
