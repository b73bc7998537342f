"""Pure types and rules: the workflow spec, its validation, run and step states. No I/O."""
