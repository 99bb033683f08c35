"""State -> service configuration files: the view the templates read, and the templates."""
