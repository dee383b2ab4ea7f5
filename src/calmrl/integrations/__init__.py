"""Optional plug-ins for external engines, imported lazily."""
