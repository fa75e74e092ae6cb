"""One orchestrator per command. Stages never import each other."""
