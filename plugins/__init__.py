"""torchslim's built-in plugins, one module per method family, declared as entry points."""
