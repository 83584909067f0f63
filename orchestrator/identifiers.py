"""Names users give to workflows, tasks, pools and hooks."""

IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_\-]*$"
