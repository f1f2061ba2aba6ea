"""Layer drop over distinct layers: the list, its drop rules, their registry and the linear rule."""
