"""Dataset-card templates, shipped as package data so an installed `pipeline` can render cards."""
